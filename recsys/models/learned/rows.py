"""Row gathers and bag sums of the learned scorer's tables, with the gradients its training
needs (row-sparse for lazy Adam, a gathering backward for the token pools)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.sparse.csr import gather_rows


def compact(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(items (M,), the distinct values of idx (in [0, n)) in order; slot (len(idx),) with
    idx == items[slot]), by marking an (n,) table: no sort."""
    mark = torch.zeros(n, dtype=torch.bool, device=idx.device)
    mark[idx] = True
    items = mark.nonzero().squeeze(1)
    where = torch.empty(n, dtype=torch.long, device=idx.device)
    where[items] = torch.arange(len(items), device=idx.device)
    return items, where[idx]


class _BagSum(torch.autograd.Function):
    """out[b] = sum_{k in bag b} w[k] X[idx[k]]: F.embedding_bag(mode="sum", per_sample_weights)
    whose backward gathers instead of scattering: with the entries sorted by their row of X,
    each row's gradient is itself a bag sum over rows of the output gradient. (embedding_bag's
    own backward adds one entry at a time and cost ~15x its forward here: 120 ms for the
    340,000 token entries of a batch at 100,000 items; this one ~30 ms, of which the sort is a third.)"""

    @staticmethod
    def forward(ctx, X, idx, w, offsets):
        ctx.save_for_backward(idx, w, offsets)
        ctx.n_rows = X.shape[0]
        return F.embedding_bag(idx, X, offsets, mode="sum", per_sample_weights=w)         # (n_bags, D)

    @staticmethod
    def backward(ctx, g):
        idx, w, offsets = ctx.saved_tensors
        lengths = torch.diff(offsets, append=offsets.new_tensor([len(idx)]))
        bag = torch.repeat_interleave(torch.arange(len(offsets), device=idx.device), lengths)   # (nnz,)
        order = torch.argsort(idx, stable=True)          # stable: a fixed order of summation
        counts = torch.bincount(idx, minlength=ctx.n_rows)
        gX = F.embedding_bag(bag[order], g.contiguous(), torch.cumsum(counts, 0) - counts, mode="sum",
                             per_sample_weights=w[order])                                  # (n_rows, D)
        return gX, None, None, None


def bag_sum(X: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(n_bags, D): bag b sums w[k] X[idx[k]] over k in offsets[b]:offsets[b+1] (an empty bag
    gives 0); differentiable in X (see _BagSum)."""
    return _BagSum.apply(X, idx, w, offsets)


class _SparseRows(torch.autograd.Function):
    """weight[idx] whose gradient is a sparse COO tensor holding only the rows of idx (for a
    1-D table such as item_bias, which F.embedding(sparse=True) cannot take)."""

    @staticmethod
    def forward(ctx, weight, idx):
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        return weight[idx]

    @staticmethod
    def backward(ctx, grad):
        idx, = ctx.saved_tensors
        return torch.sparse_coo_tensor(idx[None], grad, ctx.shape, check_invariants=False), None


def sparse_rows(weight: torch.Tensor, idx: torch.Tensor, sparse: bool) -> torch.Tensor:
    """weight[idx], with a row-sparse gradient when `sparse`."""
    return _SparseRows.apply(weight, idx) if sparse else weight[idx]


def bag_entries(indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, items: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The token entries of the (n,) items' bags, for a bag sum of those items only:
    (tokens (nnz,), their weights (nnz,), offsets (n,) where each item's entries start)."""
    pos, _ = gather_rows(indptr, items)
    n = indptr[items + 1] - indptr[items]                                                 # (n,)
    return indices[pos], weights[pos], torch.cumsum(n, 0) - n


def dot(u: torch.Tensor, table: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """u (B, D) against rows of table (I, D): all rows, shared rows (N,) or per-user rows (B, N)."""
    if items is None:
        return u @ table.T                                   # (B, I)
    if items.dim() == 1:
        return u @ table[items].T                            # (B, N)
    return torch.einsum("bd,bnd->bn", u, table[items])       # (B, N)
