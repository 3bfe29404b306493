"""Top-K accuracy metrics from ranked lists, batched on the device. Definitions (RecBole's):

For a user with test items T (|T| > 0) and ranked list r_1..r_K, hit_j = [r_j in T]:
    Recall@K    = sum_j hit_j / |T|
    Precision@K = sum_j hit_j / K
    HitRate@K   = 1 if any hit_j else 0
    MRR@K       = 1 / (rank of the first hit), 0 if none in the top K
    NDCG@K      = DCG / IDCG, DCG = sum_j hit_j / log2(j + 1),
                  IDCG = sum_{j=1..min(|T|, K)} 1 / log2(j + 1)     (binary relevance)
    MAP@K       = sum_j hit_j * Precision@j / min(|T|, K)
Every metric is averaged over users with at least one test item.
"""
from __future__ import annotations

import torch

from recsys.sparse.csr import gather_rows

METRICS = ("recall", "precision", "ndcg", "hit", "mrr", "map")


def hits_matrix(topk_items: torch.Tensor, users: torch.Tensor, target_indptr: torch.Tensor,
                target_indices: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits (B, K) bool, n_targets (B,)) for ranked lists of `users`. Builds a (B, n_items)
    boolean target mask for the chunk only."""
    pos, row_of = gather_rows(target_indptr, users)
    target = torch.zeros(len(users), n_items, dtype=torch.bool, device=topk_items.device)
    target[row_of, target_indices[pos]] = True
    n_t = (target_indptr[users + 1] - target_indptr[users]).to(topk_items.device)
    return target.gather(1, topk_items), n_t


def per_user_metrics(hits: torch.Tensor, n_targets: torch.Tensor, ks: list[int],
                     metrics=METRICS) -> dict[str, torch.Tensor]:
    """hits (B, Kmax) bool, n_targets (B,) > 0 -> {"ndcg@10": (B,) float64, ...}."""
    kmax = max(ks)
    if hits.shape[1] < kmax:
        raise ValueError(f"ranked lists have {hits.shape[1]} items, need {kmax}")
    h = hits[:, :kmax].double()
    nt = n_targets.double()
    ranks = torch.arange(1, kmax + 1, device=h.device, dtype=torch.float64)
    disc = 1.0 / torch.log2(ranks + 1)                    # (Kmax,)
    cum_hits = torch.cumsum(h, 1)                         # (B, Kmax)
    cum_dcg = torch.cumsum(h * disc, 1)
    ideal = torch.cumsum(disc, 0)                         # IDCG for 1..Kmax relevant items
    cum_ap = torch.cumsum(h * cum_hits / ranks, 1)
    first = torch.where(h.any(1), h.argmax(1).double() + 1, torch.inf)   # rank of first hit
    out = {}
    for k in ks:
        hk = cum_hits[:, k - 1]
        m = {
            "recall": hk / nt,
            "precision": hk / k,
            "hit": (hk > 0).double(),
            "mrr": torch.where(first <= k, 1.0 / first, torch.zeros_like(first)),
            "ndcg": cum_dcg[:, k - 1] / ideal[(nt.clamp(max=k) - 1).long()],
            "map": cum_ap[:, k - 1] / nt.clamp(max=k),
        }
        for name in metrics:
            out[f"{name}@{k}"] = m[name]
    return out
