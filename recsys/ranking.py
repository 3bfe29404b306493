"""Full ranking in user chunks: scores for a chunk of users against every item, seen items
masked, top-k. Peak memory is O(chunk_size x n_items) floats whatever the number of users."""
from __future__ import annotations

from typing import Iterator

import torch

from .sparse import gather_rows


def mask_seen(scores: torch.Tensor, users: torch.Tensor, seen_indptr: torch.Tensor,
              seen_indices: torch.Tensor) -> torch.Tensor:
    """In place: scores (B, I) of `users` get -inf at each user's seen items."""
    pos, row_of = gather_rows(seen_indptr, users)
    scores[row_of, seen_indices[pos]] = float("-inf")
    return scores


@torch.no_grad()
def iter_topk(scorer, users: torch.Tensor, k: int, seen: tuple[torch.Tensor, torch.Tensor] | None = None,
              chunk_size: int = 1024, tables: dict | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (users (b,), top-k item indices (b, k), their scores (b, k)) chunk by chunk.

    seen: CSR (indptr, indices) of items to exclude per user, or None to rank everything.
    tables: scorer.item_tables(), when the caller already has them.
    Ties break towards the lower item index (torch.topk on CPU and CUDA alike is not guaranteed
    to, so scores are compared, not indices, in tests). A masked item can only appear when a
    user has fewer than k unseen items; its score is then -inf.
    """
    n_items = scorer.config.n_items
    if not 0 < k <= n_items:
        raise ValueError(f"k={k} must be between 1 and the catalog size {n_items}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if tables is None:
        tables = scorer.item_tables()
    for start in range(0, len(users), chunk_size):
        u = users[start:start + chunk_size]
        s = scorer.score_users(u, tables)                          # (b, I)
        if seen is not None:
            mask_seen(s, u, *seen)
        v, i = torch.topk(s, k, dim=1)                             # (b, k)
        yield u, i, v


def topk(scorer, users: torch.Tensor, k: int, seen=None, chunk_size: int = 1024):
    """All chunks of iter_topk concatenated: (items (B, k), scores (B, k))."""
    items, scores = [], []
    for _, i, v in iter_topk(scorer, users, k, seen, chunk_size):
        items.append(i)
        scores.append(v)
    if not items:
        dev = scorer.hist_indptr.device
        return torch.zeros(0, k, dtype=torch.long, device=dev), torch.zeros(0, k, device=dev)
    return torch.cat(items), torch.cat(scores)
