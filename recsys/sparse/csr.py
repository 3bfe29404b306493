"""CSR helpers on plain tensors: rows of a sparse matrix as (indptr, indices[, values]).

No dense user x item matrix is built anywhere: histories, seen-item masks and token bags are
CSR, and a batch of rows is gathered with vectorised index arithmetic (no Python loop per row).
"""
from __future__ import annotations

import numpy as np
import torch


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int,
                   values: np.ndarray | None = None):
    """(indptr (n_rows+1,), indices (nnz,), values (nnz,) or None), rows sorted, columns
    sorted within a row. Input pairs need not be sorted; duplicates are kept."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    # one stable sort of the combined key (rows major): torch's sort is ~10x np.lexsort here
    width = int(cols.max()) + 1 if len(cols) else 1
    if len(cols) and int(cols.min()) < 0:
        raise ValueError("csr_from_pairs: negative column index")
    order = torch.sort(torch.from_numpy(rows * width + cols), stable=True).indices.numpy()
    counts = np.bincount(rows, minlength=n_rows)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    vals = None if values is None else np.asarray(values)[order]
    return indptr, cols[order], vals


def sequence_csr(pairs: np.ndarray, times: np.ndarray, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) pairs (N, 2) and their times (N,) -> CSR (indptr, indices) int64 tensors with
    each row's columns in time order, equal times in the order of the pairs (stable)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((np.arange(len(pairs)), np.asarray(times, dtype=np.float64), pairs[:, 0]))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n_rows), out=indptr[1:])
    return torch.from_numpy(indptr), torch.from_numpy(np.ascontiguousarray(pairs[order, 1]))


def gather_rows(indptr: torch.Tensor, rows: torch.Tensor):
    """Flat positions of the entries of `rows` in a CSR matrix.

    Returns (pos (M,), row_of (M,)): `indices[pos]` are the entries, and `row_of[m]` is the
    position in `rows` (0..B-1) that entry m belongs to. Vectorised: no loop over rows.
    """
    start = indptr[rows]                                  # (B,)
    lengths = indptr[rows + 1] - start                    # (B,)
    row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    # position within its row: global arange minus the offset where the row starts in the output
    offsets = torch.cumsum(lengths, 0) - lengths          # (B,)
    within = torch.arange(int(lengths.sum()), device=rows.device) - offsets[row_of]
    return start[row_of] + within, row_of


def csr(pairs: np.ndarray, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) pairs (N, 2) -> CSR (indptr (n_rows+1,), indices (N,)) as int64 tensors."""
    indptr, indices, _ = csr_from_pairs(pairs[:, 0], pairs[:, 1], n_rows)
    return torch.from_numpy(indptr), torch.from_numpy(indices)


def row_ids(indptr: torch.Tensor) -> torch.Tensor:
    """(nnz,) the row of every entry of a CSR matrix: [0, 0, 1, 3, 3, 3] for indptr [0, 2, 3, 3, 6]."""
    return torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr[1:] - indptr[:-1])


def transpose_entries(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_cols: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries (rows, cols, vals) of a matrix, listed row by row, as the CSR of its transpose:
    (indptr (n_cols+1,), indices = their rows, values), rows ascending within each column (one
    stable sort of the column indices)."""
    order = torch.argsort(cols, stable=True)
    indptr = torch.zeros(n_cols + 1, dtype=torch.long, device=cols.device)
    indptr[1:] = torch.cumsum(torch.bincount(cols, minlength=n_cols), 0)
    return indptr, rows[order], vals[order]


def keep_entries(indptr: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR (indptr, indices) with only the entries where keep (nnz,) bool is True; the
    number of rows is unchanged (a row may become empty)."""
    counts = torch.bincount(row_ids(indptr)[keep], minlength=len(indptr) - 1)
    new = torch.zeros_like(indptr)
    new[1:] = torch.cumsum(counts, 0)
    return new, indices[keep]


def member(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(N,) bool: keys[i] is in pool (int64 arrays), by one sort and a binary search (np.isin's
    hashing is several times slower on tens of millions of keys)."""
    if len(pool) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    srt = torch.sort(torch.from_numpy(np.ascontiguousarray(pool))).values.numpy()
    pos = np.minimum(np.searchsorted(srt, keys), len(srt) - 1)
    return srt[pos] == keys


def pairs_in(pairs: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> np.ndarray:
    """(N,) bool: which (row, col) pairs (N, 2) are entries of the CSR matrix (indptr, indices)
    with n_cols columns (keys row * n_cols + col, `member`)."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    return member(pairs[:, 0].astype(np.int64) * n_cols + pairs[:, 1], rows * n_cols + indices)
