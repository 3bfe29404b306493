"""Row-row similarities of a sparse matrix, block by block on the device, keeping each row's
top-k neighbours. The full (R, R) similarity matrix is never built unless asked for.

X is (R, C) sparse: for ItemKNN the rows are items and the columns users, for UserKNN the rows
are users and the columns items, for content KNN the rows are items and the columns tokens
(TF-IDF weights). For rows a, b with entries x_a, x_b (missing entries are 0), S_a the set of
columns where row a has an entry, and co(a, b) = |S_a ∩ S_b|:

    cosine     x_a . x_b / (|x_a| |x_b|)
    pearson    sum_{c in S_a ∩ S_b} (x_ac - m_a)(x_bc - m_b)
               / sqrt(sum_{c in S_a ∩ S_b} (x_ac - m_a)^2 * sum_{c in S_a ∩ S_b} (x_bc - m_b)^2)
               where m_a is the mean of row a over its own entries S_a (not only the co-rated
               ones); on binary data every centred value is 0, so Pearson is 0 everywhere
    euclidean  1 / (1 + |x_a - x_b|)       (over all columns, missing = 0)
    jaccard    |S_a ∩ S_b| / |S_a ∪ S_b|   (on the supports, whatever the values)

Any 0/0 (an empty row, no overlap, a constant row under Pearson) is 0, never NaN.
Shrinkage (significance weighting): sim * co / (co + shrink), so pairs with few co-occurring
columns are pulled towards 0; shrink = 0 leaves sim unchanged.

Neighbourhoods: each row keeps its k most similar other rows with similarity > 0 (a row is not
its own neighbour). Blocks of `block_size` rows are compared with all R rows as one sparse x
dense matmul, then top-k'd, so peak memory for the similarity is about

    block_size x (R + C) floats (the dense block and its (R, block) similarity, times ~3 for
    Pearson's extra products) + R x k x 12 bytes (the kept neighbours),

and the result does not depend on block_size.
"""
from __future__ import annotations

import torch

SIMILARITIES = ("cosine", "pearson", "euclidean", "jaccard")


def sparse_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor | None,
                n_cols: int) -> torch.Tensor:
    """(R, C) sparse CSR float32 tensor from CSR arrays (values None = all ones)."""
    if values is None:
        values = torch.ones(len(indices), dtype=torch.float32, device=indices.device)
    return torch.sparse_csr_tensor(indptr, indices, values.float(), (len(indptr) - 1, n_cols))


def _dense_rows(X: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of a sparse CSR matrix as a dense (r1 - r0, C) tensor."""
    crow, col, val = X.crow_indices(), X.col_indices(), X.values()
    a, b = int(crow[r0]), int(crow[r1])
    out = torch.zeros(r1 - r0, X.shape[1], dtype=val.dtype, device=val.device)
    rows = torch.repeat_interleave(torch.arange(r1 - r0, device=val.device), crow[r0 + 1:r1 + 1] - crow[r0:r1])
    out[rows, col[a:b]] = val[a:b]
    return out


def _with_values(X: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(X.crow_indices(), X.col_indices(), values, X.shape)


class _Prepared:
    """Per-row statistics and the sparse matrices each similarity needs, computed once."""

    def __init__(self, X: torch.Tensor, similarity: str, shrink: float):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
        self.similarity, self.shrink = similarity, float(shrink)
        crow, val = X.crow_indices(), X.values()
        counts = (crow[1:] - crow[:-1])
        row_of = torch.repeat_interleave(torch.arange(X.shape[0], device=val.device), counts)
        self.X = X
        self.M = _with_values(X, torch.ones_like(val))                           # supports
        self.n = counts.to(val.dtype)                                           # (R,) |S_a|
        if similarity == "pearson":
            # float64 so that a constant row centres to exactly 0 (a float32 mean of 0.1s is not
            # 0.1, and rounding noise over rounding noise would give any Pearson value)
            v64 = val.double()
            sums = torch.zeros(X.shape[0], dtype=torch.float64, device=val.device).index_add_(0, row_of, v64)
            mean = sums / self.n.double().clamp(min=1)
            centred = (v64 - mean[row_of]).to(val.dtype)
            self.A = _with_values(X, centred)
            self.A2 = _with_values(X, centred * centred)
        else:
            self.sq = torch.zeros(X.shape[0], dtype=val.dtype, device=val.device).index_add_(0, row_of, val * val)

    def block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, R) similarities of rows r0:r1 against every row."""
        s = self.similarity
        co = None
        if s == "cosine":
            num = torch.sparse.mm(self.X, _dense_rows(self.X, r0, r1).T).T          # (b, R)
            den = torch.sqrt(self.sq[r0:r1, None] * self.sq[None, :])
            sim = _safe_div(num, den)
        elif s == "euclidean":
            num = torch.sparse.mm(self.X, _dense_rows(self.X, r0, r1).T).T
            d2 = (self.sq[r0:r1, None] + self.sq[None, :] - 2 * num).clamp(min=0)
            sim = 1.0 / (1.0 + torch.sqrt(d2))
        elif s == "jaccard":
            co = torch.sparse.mm(self.M, _dense_rows(self.M, r0, r1).T).T
            sim = _safe_div(co, self.n[r0:r1, None] + self.n[None, :] - co)
        else:  # pearson over co-rated entries
            Mb = _dense_rows(self.M, r0, r1)
            num = torch.sparse.mm(self.A, _dense_rows(self.A, r0, r1).T).T
            ss_other = torch.sparse.mm(self.A2, Mb.T).T          # sum over co-rated of (x_o - m_o)^2
            ss_self = torch.sparse.mm(self.M, _dense_rows(self.A2, r0, r1).T).T
            sim = _safe_div(num, torch.sqrt(ss_self * ss_other))
        if self.shrink > 0:
            if co is None:
                co = torch.sparse.mm(self.M, _dense_rows(self.M, r0, r1).T).T
            sim = sim * co / (co + self.shrink)
        return sim


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def similarity_matrix(X: torch.Tensor, similarity: str = "cosine", shrink: float = 0.0,
                      block_size: int = 1024) -> torch.Tensor:
    """The dense (R, R) similarity matrix (diagonal included). Only for small R: tests, EASE-sized data."""
    p = _Prepared(X, similarity, shrink)
    R = X.shape[0]
    return torch.cat([p.block(r0, min(r0 + block_size, R)) for r0 in range(0, R, block_size)])


def topk_neighbours(X: torch.Tensor, similarity: str = "cosine", k: int = 100, shrink: float = 0.0,
                    block_size: int = 1024) -> torch.Tensor:
    """Each row's k most similar other rows with similarity > 0, as a sparse CSR (R, R) matrix
    W with W[a, b] = sim(a, b) for b in the neighbourhood of a."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    p = _Prepared(X, similarity, shrink)
    R = X.shape[0]
    kk = min(k, max(R - 1, 1))
    idx, val = [], []
    for r0 in range(0, R, block_size):
        r1 = min(r0 + block_size, R)
        sim = p.block(r0, r1)                                                  # (b, R)
        rows = torch.arange(r1 - r0, device=sim.device)
        sim[rows, rows + r0] = float("-inf")                                   # not its own neighbour
        v, i = torch.topk(sim, kk, dim=1)                                      # (b, kk)
        idx.append(i)
        val.append(v)
    idx, val = torch.cat(idx), torch.cat(val)                                  # (R, kk)
    keep = val > 0
    counts = keep.sum(1)
    crow = torch.zeros(R + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.cumsum(counts, 0)
    # within a row, order columns ascending (canonical CSR) so results compare exactly
    col = torch.where(keep, idx, torch.full_like(idx, R))
    col, order = torch.sort(col, dim=1)
    v = torch.gather(val, 1, order)
    mask = col < R
    return torch.sparse_csr_tensor(crow, col[mask], v[mask], (R, R))
