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
sparse matmul (work = co-occurring entries, as in implicit), densified to (block, R), then
top-k'd, so peak memory for the similarity is about

    nnz(X) x 12 bytes x 2 (X and its transpose; x3 for Pearson)
    + block_size x R x 4 bytes x ~4 (the dense block, its sparse product, temporaries)
    + max_products x ~40 bytes (the scalar products of a block are materialised before they
      are summed; blocks are cut so that they hold at most max_products, default 5 million)
    + R x k x 16 bytes (the kept neighbours),

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


def _slice_rows(X: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of a sparse CSR matrix, still sparse CSR (no copy of the other rows)."""
    crow = X.crow_indices()
    a, b = int(crow[r0]), int(crow[r1])
    return torch.sparse_csr_tensor(crow[r0:r1 + 1] - a, X.col_indices()[a:b], X.values()[a:b], (r1 - r0, X.shape[1]))


def select_rows(X: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` (any order, repeats allowed) of a sparse CSR matrix, as sparse CSR (B, C)."""
    from .sparse import gather_rows
    crow = X.crow_indices()
    pos, _ = gather_rows(crow, rows)
    lengths = crow[rows + 1] - crow[rows]
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    new_crow[1:] = torch.cumsum(lengths, 0)
    return torch.sparse_csr_tensor(new_crow, X.col_indices()[pos], X.values()[pos], (len(rows), X.shape[1]))


def _dense(S: torch.Tensor) -> torch.Tensor:
    """Sparse CSR -> dense by one scatter (faster than Tensor.to_dense for CSR on the CPU)."""
    crow = S.crow_indices()
    rows = torch.repeat_interleave(torch.arange(S.shape[0], device=crow.device), crow[1:] - crow[:-1])
    out = torch.zeros(S.shape, dtype=S.values().dtype, device=crow.device)
    out[rows, S.col_indices()] = S.values()
    return out


def _spgemm(A: torch.Tensor, BT: torch.Tensor) -> torch.Tensor:
    """A (b, C) sparse @ BT (C, R) sparse -> (b, R) dense. Sparse x sparse: every scalar
    product a[r, c] * bt[c, j] is formed once (gathered rows of BT) and summed into the dense
    output with one index_add, so the work is the number of co-occurring entries, not b x C x R.
    (torch.sparse.mm on two CSR tensors leaks its output buffers in torch 2.13 on the CPU,
    about 46 MB per call in our benchmark, hence this.)"""
    from .sparse import gather_rows
    a_crow, a_col, a_val = A.crow_indices(), A.col_indices(), A.values()
    a_row = torch.repeat_interleave(torch.arange(A.shape[0], device=a_crow.device), a_crow[1:] - a_crow[:-1])
    pos, entry = gather_rows(BT.crow_indices(), a_col)             # products: (P,), (P,)
    R = BT.shape[1]
    out = torch.zeros(A.shape[0] * R, dtype=a_val.dtype, device=a_val.device)
    out.index_add_(0, a_row[entry] * R + BT.col_indices()[pos], a_val[entry] * BT.values()[pos])
    return out.view(A.shape[0], R)


def _t(X: torch.Tensor) -> torch.Tensor:
    return X.t().to_sparse_csr()


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
            self.AT, self.A2T, self.MT = _t(self.A), _t(self.A2), _t(self.M)
        else:
            self.sq = torch.zeros(X.shape[0], dtype=val.dtype, device=val.device).index_add_(0, row_of, val * val)
            self.XT = _t(X)
            if similarity == "jaccard" or shrink > 0:
                self.MT = _t(self.M)

    def block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, R) similarities of rows r0:r1 against every row."""
        s = self.similarity
        co = None
        if s == "cosine":
            num = _spgemm(_slice_rows(self.X, r0, r1), self.XT)                     # (b, R)
            sim = _safe_div(num, torch.sqrt(self.sq[r0:r1, None] * self.sq[None, :]))
        elif s == "euclidean":
            num = _spgemm(_slice_rows(self.X, r0, r1), self.XT)
            d2 = (self.sq[r0:r1, None] + self.sq[None, :] - 2 * num).clamp(min=0)
            sim = 1.0 / (1.0 + torch.sqrt(d2))
        elif s == "jaccard":
            co = _spgemm(_slice_rows(self.M, r0, r1), self.MT)
            sim = _safe_div(co, self.n[r0:r1, None] + self.n[None, :] - co)
        else:  # pearson over co-rated entries
            num = _spgemm(_slice_rows(self.A, r0, r1), self.AT)
            ss_self = _spgemm(_slice_rows(self.A2, r0, r1), self.MT)   # sum over co-rated of (x_a - m_a)^2
            ss_other = _spgemm(_slice_rows(self.M, r0, r1), self.A2T)  # ... of (x_b - m_b)^2
            sim = _safe_div(num, torch.sqrt(ss_self * ss_other))
        if self.shrink > 0:
            if co is None:
                co = _spgemm(_slice_rows(self.M, r0, r1), self.MT)
            sim = sim * co / (co + self.shrink)
        return sim


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _row_products(A: torch.Tensor, BT: torch.Tensor) -> list[float]:
    """Scalar products each row of A @ BT costs: sum over its entries of the matching row
    lengths of BT. (R,) as a Python list."""
    t_len = (BT.crow_indices()[1:] - BT.crow_indices()[:-1]).double()
    crow = A.crow_indices()
    row_of = torch.repeat_interleave(torch.arange(A.shape[0], device=crow.device), crow[1:] - crow[:-1])
    out = torch.zeros(A.shape[0], dtype=torch.float64, device=crow.device)
    return out.index_add_(0, row_of, t_len[A.col_indices()]).cpu().tolist()


def _cut(products: list[float], max_rows: int, max_products: float) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most max_rows rows and max_products products each (a single
    heavier row gets a range of its own)."""
    out, start, acc = [], 0, 0.0
    for r, f in enumerate(products):
        if r > start and (r - start >= max_rows or acc + f > max_products):
            out.append((start, r))
            start, acc = r, 0.0
        acc += f
    if start < len(products):
        out.append((start, len(products)))
    return out


def spgemm_bounded(A: torch.Tensor, BT: torch.Tensor, max_products: float = 5_000_000) -> torch.Tensor:
    """A (b, C) sparse @ BT (C, R) sparse -> (b, R) dense, in row groups of at most
    max_products scalar products (they are materialised before being summed)."""
    parts = [_spgemm(_slice_rows(A, r0, r1), BT)
             for r0, r1 in _cut(_row_products(A, BT), A.shape[0], max_products)]
    if not parts:
        return torch.zeros(A.shape[0], BT.shape[1], device=A.values().device)
    return torch.cat(parts)


def _blocks(p: "_Prepared", block_size: int, max_products: int) -> list[tuple[int, int]]:
    """Row ranges of at most block_size rows whose sparse x sparse product has at most
    max_products scalar products. The products are materialised, so this, not only
    block_size, bounds memory."""
    X, XT = (p.A, p.AT) if p.similarity == "pearson" else (p.M, p.MT) if p.similarity == "jaccard" else (p.X, p.XT)
    return _cut(_row_products(X, XT), block_size, max_products)


def similarity_matrix(X: torch.Tensor, similarity: str = "cosine", shrink: float = 0.0,
                      block_size: int = 1024, max_products: int = 5_000_000) -> torch.Tensor:
    """The dense (R, R) similarity matrix (diagonal included). Only for small R: tests, EASE-sized data."""
    p = _Prepared(X, similarity, shrink)
    return torch.cat([p.block(r0, r1) for r0, r1 in _blocks(p, block_size, max_products)])


def topk_neighbours(X: torch.Tensor, similarity: str = "cosine", k: int = 100, shrink: float = 0.0,
                    block_size: int = 1024, max_products: int = 5_000_000) -> torch.Tensor:
    """Each row's k most similar other rows with similarity > 0, as a sparse CSR (R, R) matrix
    W with W[a, b] = sim(a, b) for b in the neighbourhood of a. Blocks hold at most block_size
    rows and max_products scalar products (see _blocks)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    p = _Prepared(X, similarity, shrink)
    R = X.shape[0]
    kk = min(k, max(R - 1, 1))
    idx, val = [], []
    for r0, r1 in _blocks(p, block_size, max_products):
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
