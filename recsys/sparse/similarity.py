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
its own neighbour). Blocks of at most `block_size` rows are compared with all R rows by the
sparse x sparse kernel of spgemm.py (scalar products for light columns, one GEMM for the few
heavy ones), into a reused dense (block, R) buffer, which is then top-k'd. Peak memory of the
similarity is about

    nnz(X) x 42 bytes (X, its light part, and the light transpose as padded lists of at most
      1.5 x its entries, at 12 bytes an entry; x3 for Pearson and shrinkage)
    + R x n_heavy x 4 bytes (the heavy columns, dense; n_heavy <= 2048)
    + workers x block_size x R x 4 bytes x 2 (a dense block and its scratch, per worker)
    + workers x max_products x 12 bytes (the scalar products of a block, index and value, are
      materialised before they are summed; blocks are cut so that they hold at most
      max_products, padding included, default 2 million)
    + R x k x 16 bytes (the kept neighbours),

and the result does not depend on block_size, max_products or the heavy/light split. A whole
ItemKNN fit also holds the model's copy of the histories and their transpose (nnz x 24 bytes).
On the CPU, blocks run on `workers` Python threads (default: torch's thread count), each with
single-threaded ops, because the kernel's scatter-add is single-threaded in torch.
"""
from __future__ import annotations

import torch

from recsys.sparse.csr import gather_rows, row_ids, transpose_entries
from recsys.sparse.spgemm import (DENSE_RATIO, RightOperand, Workspace, column_counts, cut_rows, for_blocks,
                                  heavy_columns, slice_rows)

SIMILARITIES = ("cosine", "pearson", "euclidean", "jaccard")


def sparse_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor | None,
                n_cols: int) -> torch.Tensor:
    """(R, C) sparse CSR float32 tensor from CSR arrays (values None = all ones)."""
    if values is None:
        values = torch.ones(len(indices), dtype=torch.float32, device=indices.device)
    return torch.sparse_csr_tensor(indptr, indices, values.float(), (len(indptr) - 1, n_cols))


def select_rows(X: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` (any order, repeats allowed) of a sparse CSR matrix, as sparse CSR (B, C)."""
    crow = X.crow_indices()
    pos, _ = gather_rows(crow, rows)
    lengths = crow[rows + 1] - crow[rows]
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    new_crow[1:] = torch.cumsum(lengths, 0)
    return torch.sparse_csr_tensor(new_crow, X.col_indices()[pos], X.values()[pos], (len(rows), X.shape[1]))


def transpose(X: torch.Tensor) -> torch.Tensor:
    """X^T (C, R) as CSR, columns in order within each row: one stable sort of the column
    indices (half the time of torch's to_sparse_csr on the CPU)."""
    R, C = X.shape
    crow, col = X.crow_indices(), X.col_indices()
    t_crow, t_col, t_val = transpose_entries(row_ids(crow), col, X.values(), C)
    return torch.sparse_csr_tensor(t_crow.to(crow.dtype), t_col.to(col.dtype), t_val, (C, R))


def _with_values(X: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(X.crow_indices(), X.col_indices(), values, X.shape)


class Similarity:
    """Per-row statistics and the sparse operands each similarity needs, computed once."""

    def __init__(self, X: torch.Tensor, similarity: str, shrink: float, dense_ratio: float = DENSE_RATIO):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
        self.similarity, self.shrink = similarity, float(shrink)
        R = X.shape[0]
        if similarity == "euclidean":
            # |x_a|^2 + |x_b|^2 - 2 x_a.x_b cancels badly in float32 (close rows, the diagonal)
            X = _with_values(X, X.values().double())
        crow, val = X.crow_indices(), X.values()
        counts = (crow[1:] - crow[:-1])
        row_of = row_ids(crow)
        cc = column_counts(X)
        heavy = heavy_columns(cc, cc, R, R, dense_ratio)
        self.X = X
        self.M = _with_values(X, torch.ones_like(val))                           # supports
        self.n = counts.to(val.dtype)                                           # (R,) |S_a|
        self.ops: dict[str, RightOperand] = {}
        if similarity == "pearson":
            # float64 so that a constant row centres to exactly 0 (a float32 mean of 0.1s is not
            # 0.1, and rounding noise over rounding noise would give any Pearson value)
            v64 = val.double()
            sums = torch.zeros(R, dtype=torch.float64, device=val.device).index_add_(0, row_of, v64)
            mean = sums / self.n.double().clamp(min=1)
            centred = (v64 - mean[row_of]).to(val.dtype)
            self.A = _with_values(X, centred)
            self.A2 = _with_values(X, centred * centred)
            for name in ("A", "A2", "M"):
                self.ops[name] = RightOperand(getattr(self, name), heavy)
        else:
            sq = torch.zeros(R, dtype=val.dtype, device=val.device).index_add_(0, row_of, val * val)
            self.sq = sq
            self.inv_norm = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))   # 0 for empty rows
            self.ops["X"] = RightOperand(X, heavy)
            if similarity == "jaccard" or shrink > 0:
                self.ops["M"] = RightOperand(self.M, heavy)
        if shrink > 0 and "M" not in self.ops:
            self.ops["M"] = RightOperand(self.M, heavy)
        self.products = next(iter(self.ops.values())).light_products(self.M).tolist()   # same support for all

    def _prod(self, left: str, right: str, r0: int, r1: int, ws: Workspace, name: str) -> torch.Tensor:
        """(r1 - r0, R) = rows r0:r1 of matrix `left` @ matrix `right`^T, into ws buffer `name`."""
        L = self.ops[left]                                  # same heavy columns as ops[right]
        A = slice_rows(L.light, r0, r1)
        out = ws.matrix(name, r1 - r0, self.X.shape[0], A.values().dtype, A.values().device)
        return self.ops[right].product_split(A, L.dense[r0:r1], out, ws)

    def block(self, r0: int, r1: int, ws: Workspace | None = None, row_scale_later: bool = False):
        """(r1 - r0, R) similarities of rows r0:r1 against every row. The result lives in ws
        (overwritten by the next block computed with the same ws). With row_scale_later, returns
        (block, row factors (b,) or None): cosine leaves out the positive per-row factor, which
        does not change a row's ranking, for the caller to apply to the values it keeps."""
        ws = ws if ws is not None else Workspace()
        s = self.similarity
        co = None
        if s == "cosine":
            sim = self._prod("X", "X", r0, r1, ws, "num")
            sim.mul_(self.inv_norm[None, :])
            if row_scale_later and self.shrink == 0:
                return sim, self.inv_norm[r0:r1]
            sim.mul_(self.inv_norm[r0:r1, None])
        elif s == "euclidean":
            sim = self._prod("X", "X", r0, r1, ws, "num")                      # then |x_a - x_b|^2
            sim.mul_(-2).add_(self.sq[r0:r1, None]).add_(self.sq[None, :]).clamp_(min=0)
            sim.sqrt_().add_(1).reciprocal_()
        elif s == "jaccard":
            co = self._prod("M", "M", r0, r1, ws, "co")
            den = ws.matrix("den", r1 - r0, co.shape[1], co.dtype, co.device)
            torch.add(self.n[r0:r1, None], self.n[None, :], out=den).sub_(co).clamp_(min=1)
            sim = torch.div(co, den, out=ws.matrix("num", *co.shape, co.dtype, co.device))  # 0 when both empty
        else:  # pearson over co-rated entries
            sim = self._prod("A", "A", r0, r1, ws, "num")
            ss_self = self._prod("A2", "M", r0, r1, ws, "den")    # sum over co-rated of (x_a - m_a)^2
            ss_other = self._prod("M", "A2", r0, r1, ws, "den2")  # ... of (x_b - m_b)^2
            den = ss_self.mul_(ss_other).sqrt_()
            den.masked_fill_(den <= 0, float("inf"))             # 0/0 -> 0 (num is 0 there too)
            sim.div_(den)
        if self.shrink > 0:
            if co is None:
                co = self._prod("M", "M", r0, r1, ws, "co")
            sim.mul_(co).div_(co.add_(self.shrink))
        return (sim, None) if row_scale_later else sim


def _blocks(p: Similarity, block_size: int, max_products: float) -> list[tuple[int, int]]:
    """Row ranges of at most block_size rows and max_products materialised scalar products."""
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    return cut_rows(p.products, block_size, max_products)


def _run_blocks(p: Similarity, blocks: list[tuple[int, int]], fn, workers: int | None) -> list:
    """fn(r0, r1, sim, row_scale) for every block (see Similarity.block), in block order; blocks
    spread over `workers` threads on the CPU (spgemm.for_blocks), one thread on other devices."""
    return for_blocks(blocks, lambda r0, r1, ws: fn(r0, r1, *p.block(r0, r1, ws, row_scale_later=True)),
                      workers, p.X.values().device)


def _scaled_copy(r0: int, r1: int, sim: torch.Tensor, row_scale: torch.Tensor | None) -> torch.Tensor:
    out = sim.to(torch.float32, copy=True)
    return out if row_scale is None else out.mul_(row_scale[:, None])


def similarity_matrix(X: torch.Tensor, similarity: str = "cosine", shrink: float = 0.0,
                      block_size: int = 256, max_products: float = 2_000_000,
                      dense_ratio: float = DENSE_RATIO, workers: int | None = None) -> torch.Tensor:
    """The dense (R, R) similarity matrix (diagonal included). Only for small R: tests, EASE-sized data."""
    p = Similarity(X, similarity, shrink, dense_ratio)
    parts = _run_blocks(p, _blocks(p, block_size, max_products), _scaled_copy, workers)
    if not parts:
        return torch.zeros(0, 0, device=X.values().device)
    return torch.cat(parts)


def topk_neighbours(X: torch.Tensor, similarity: str = "cosine", k: int = 100, shrink: float = 0.0,
                    block_size: int = 256, max_products: float = 2_000_000,
                    dense_ratio: float = DENSE_RATIO, workers: int | None = None) -> torch.Tensor:
    """Each row's k most similar other rows with similarity > 0, as a sparse CSR (R, R) matrix
    W with W[a, b] = sim(a, b) for b in the neighbourhood of a. Blocks hold at most block_size
    rows and max_products scalar products; dense_ratio picks the heavy columns (spgemm.py)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    p = Similarity(X, similarity, shrink, dense_ratio)
    R = X.shape[0]
    kk = min(k, max(R - 1, 1))

    def keep(r0: int, r1: int, sim: torch.Tensor, row_scale: torch.Tensor | None):
        rows = torch.arange(r1 - r0, device=sim.device)
        sim[rows, rows + r0] = float("-inf")                                   # not its own neighbour
        v, i = torch.topk(sim, kk, dim=1)                                      # (b, kk) values, indices
        if row_scale is not None:
            v = torch.where(torch.isfinite(v), v * row_scale[:, None], v)
        return v, i

    parts = _run_blocks(p, _blocks(p, block_size, max_products), keep, workers)
    dev = X.values().device
    if not parts:
        return torch.sparse_csr_tensor(torch.zeros(1, dtype=torch.long, device=dev),
                                       torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, device=dev), (0, 0))
    val = torch.cat([v for v, _ in parts])                                     # (R, kk)
    idx = torch.cat([i for _, i in parts])
    keep_ = val > 0
    counts = keep_.sum(1)
    crow = torch.zeros(R + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.cumsum(counts, 0)
    # within a row, order columns ascending (canonical CSR) so results compare exactly
    col = torch.where(keep_, idx, torch.full_like(idx, R))
    col, order = torch.sort(col, dim=1)
    v = torch.gather(val, 1, order)
    mask = col < R
    return torch.sparse_csr_tensor(crow, col[mask], v[mask].float(), (R, R))
