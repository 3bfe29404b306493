"""Full-ranking evaluation of a scorer: every item ranked, seen items masked, metrics averaged
over users with at least one target item."""
from __future__ import annotations

import torch

from .metrics import hits_matrix, per_user_metrics
from .ranking import iter_topk


class MetricSums:
    """Running sums of per-user metric values; `compute` gives the means over users."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n_users = 0

    def update(self, per_user: dict[str, torch.Tensor]) -> None:
        for name, v in per_user.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(v.sum())
        self.n_users += len(next(iter(per_user.values()))) if per_user else 0

    def compute(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v / max(self.n_users, 1) for k, v in self.sums.items()}


def users_with_targets(indptr: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(indptr[1:] > indptr[:-1]).flatten()


def chunk_metrics(scorer, users, k_list, target, seen, tables=None) -> dict[str, torch.Tensor]:
    """Per-user metrics {"ndcg@10": (b,)} for one chunk of users (ranked in one piece)."""
    ks = sorted(k_list)
    _, top, _ = next(iter_topk(scorer, users, ks[-1], seen, chunk_size=max(len(users), 1), tables=tables))
    hits, n_t = hits_matrix(top, users, *target, scorer.config.n_items)
    return per_user_metrics(hits, n_t, ks)


@torch.no_grad()
def evaluate(scorer, target, seen, ks=(10, 20), chunk_size: int = 1024, prefix: str = "test/"
             ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(means {"test/ndcg@10": ...}, per-user values {"ndcg@10": (N,)} with the user indices
    under "user"). target/seen: CSR (indptr, indices) tensors on the scorer's device."""
    ks = sorted(ks)
    users = users_with_targets(target[0])
    acc, per = MetricSums(), {}
    for u, top, _ in iter_topk(scorer, users, max(ks), seen, chunk_size):
        hits, n_t = hits_matrix(top, u, *target, scorer.config.n_items)
        m = per_user_metrics(hits, n_t, ks)
        acc.update(m)
        for name, v in m.items():
            per.setdefault(name, []).append(v.cpu())
    per_user = {name: torch.cat(v) for name, v in per.items()}
    per_user["user"] = users.cpu()
    return acc.compute(prefix), per_user


def format_table(metrics: dict, prefix: str = "test/") -> str:
    """Metrics {"test/ndcg@10": ...} as a text table, one row per metric, one column per K."""
    keys = [k for k in metrics if k.startswith(prefix) and "@" in k]
    ks = sorted({int(k.rsplit("@", 1)[1]) for k in keys})
    names = [n for n in ("recall", "ndcg", "precision", "hit", "mrr", "map")
             if any(f"{prefix}{n}@{k}" in metrics for k in ks)]
    lines = [f"{prefix.rstrip('/'):>10} " + " ".join(f"{'@' + str(k):>8}" for k in ks)]
    for n in names:
        lines.append(f"{n:>10} " + " ".join(f"{metrics.get(f'{prefix}{n}@{k}', float('nan')):8.4f}" for k in ks))
    return "\n".join(lines)
