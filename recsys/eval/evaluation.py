"""Full-ranking evaluation of a model: every item ranked, seen items masked, metrics averaged
over users with at least one target item. One entry point, `evaluate`, for known users and for
users outside the model scored from a given history (the new-user protocol), with optional
slices and beyond-accuracy metrics from the same ranked lists."""
from __future__ import annotations

import torch

from recsys.eval.beyond import beyond_accuracy
from recsys.eval.metrics import hits_matrix, per_user_metrics
from recsys.eval.ranking import Request, rank
from recsys.sparse.csr import keep_entries


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

    def all_reduce(self, ks) -> "MetricSums":
        """Sum over the processes of a torch.distributed group (each holds its own users), in
        place: afterwards every process has the sums and user count of all users, each user
        counted once. The metric names come from `ks` so that a process with no user agrees."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        ks = sorted(ks)
        names = sorted(per_user_metrics(torch.zeros(0, ks[-1], dtype=torch.bool), torch.zeros(0), ks))
        t = torch.tensor([self.sums.get(n, 0.0) for n in names] + [float(self.n_users)], dtype=torch.float64)
        dist.all_reduce(t)
        self.sums = dict(zip(names, t[:-1].tolist()))
        self.n_users = int(t[-1])
        return self


def users_with_targets(indptr: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(indptr[1:] > indptr[:-1]).flatten()


def measure(model, users: torch.Tensor, target, exclude, ks, chunk_size: int = 1024, histories=None, side=None,
            rerank=None, pool: int = 0):
    """Yield (users (b,), top-K items (b, K), per-user metrics {"ndcg@10": (b,)}) chunk by
    chunk, K = max(ks): the ranking of eval/ranking.rank measured against the CSR target.
    rerank, pool: a diversity re-ranker (eval/rerank.py) applied to each row's top `pool`
    candidates before the metrics (None: the model's own order)."""
    ks = sorted(ks)
    req = Request(rerank=rerank, pool=pool) if rerank is not None else None
    for u, top, _ in rank(model, users, ks[-1], exclude, chunk_size, histories, side, request=req):
        hits, n_t = hits_matrix(top, u, *target, model.config.n_items)
        yield u, top, per_user_metrics(hits, n_t, ks)


def restrict_target(target: tuple[torch.Tensor, torch.Tensor], keep_item: torch.Tensor):
    """The CSR target (indptr, indices) keeping only entries whose item has keep_item[item]."""
    indptr, indices = target
    return keep_entries(indptr, indices, keep_item[indices])


def bucket_labels(edges: list[int]) -> list[str]:
    """[5, 20] -> ["1-5", "6-20", "21+"] (training-history lengths, inclusive)."""
    out, lo = [], 1
    for e in edges:
        out.append(f"{lo}-{e}")
        lo = e + 1
    return out + [f"{lo}+"]


@torch.no_grad()
def evaluate(model, target, seen=None, ks=(10, 20), chunk_size: int = 1024, prefix: str = "test/",
             histories=None, context: dict | None = None, rerank=None,
             pool: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Full-ranking metrics of `model` on the CSR (indptr, indices) `target`, every item ranked:

    known users    seen: CSR of each user's items to mask (training items);
    new users      histories: CSR of the history each user outside the model hands over at
                   inference (model.score of those rows, no retraining); pass the same CSR as
                   `seen` to mask it (the new-user protocol does).

    Returns (means {"test/ndcg@10": ..., "test/users": N}, per-user values {"ndcg@10": (N,)}
    with the user (row) indices under "user"). Tensors on the model's device.

    context (train/build.report_context), from the same ranked lists (one pass):
    - slices by training-history length: hist_len (n_users,), buckets edges e.g. [5, 20] ->
      `{prefix}hist_1-5/ndcg@10`, `.../users`; per-user values get "bucket" (label index);
    - cold and warm items: item_cold (n_items,) bool; the target restricted to cold (warm) items,
      users with at least one such target, same lists -> `{prefix}cold_items/recall@20`, ...;
    - beyond-accuracy metrics of the lists (coverage, gini, novelty, ild, tail; beyond.py):
      beyond = {"train_user_counts": (I,), "n_users": int, "unit_vectors": CSR or None,
      "head_share": float}.

    rerank, pool: a diversity re-ranker (eval/rerank.py, e.g. from rerank.from_config) and the
    candidates it reorders; every metric above, beyond-accuracy included, is then measured on
    the re-ranked lists.
    """
    ks = sorted(ks)
    ctx = context or {}
    n_items = model.config.n_items
    users = users_with_targets(target[0])
    parts = {}
    item_cold = ctx.get("item_cold")
    if item_cold is not None:
        item_cold = item_cold.to(target[1].device)
        parts = {"cold_items": restrict_target(target, item_cold), "warm_items": restrict_target(target, ~item_cold)}
    part_acc = {name: MetricSums() for name in parts}
    acc, per, lists = MetricSums(), {}, []
    for u, top, m in measure(model, users, target, seen, ks, chunk_size, histories, rerank=rerank, pool=pool):
        acc.update(m)
        for name, v in m.items():
            per.setdefault(name, []).append(v.cpu())
        if ctx.get("beyond") is not None:
            lists.append(top.cpu())
        for name, t in parts.items():
            h, nt = hits_matrix(top, u, *t, n_items)
            has = nt > 0
            if bool(has.any()):
                part_acc[name].update(per_user_metrics(h[has], nt[has], ks))
    per_user = {name: torch.cat(v) for name, v in per.items()}
    per_user["user"] = users.cpu()
    means = acc.compute(prefix)
    means[f"{prefix}users"] = float(len(users))
    for name, a in part_acc.items():
        means.update(a.compute(f"{prefix}{name}/"))
        means[f"{prefix}{name}/users"] = float(a.n_users)
    buckets = ctx.get("buckets")
    if ctx.get("hist_len") is not None and buckets:
        edges = torch.tensor(sorted(buckets), dtype=torch.long)
        b = torch.bucketize(ctx["hist_len"].cpu()[users.cpu()], edges, right=False)   # len <= e -> bucket of e
        per_user["bucket"] = b
        for i, label in enumerate(bucket_labels(sorted(buckets))):
            sel = b == i
            means[f"{prefix}hist_{label}/users"] = float(sel.sum())
            if bool(sel.any()):
                for name, v in per_user.items():
                    if "@" in name:
                        means[f"{prefix}hist_{label}/{name}"] = float(v[sel].double().mean())
    if ctx.get("beyond") is not None:
        L = torch.cat(lists) if lists else torch.zeros(0, max(ks), dtype=torch.long)
        means.update(beyond_accuracy(L, ks, n_items, prefix=prefix, **ctx["beyond"]))
    return means, per_user


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
