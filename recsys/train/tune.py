"""Choices made on validation data after a fit.

choose_fold_in_lambda: the ridge weight of the MF fold-in (Scorer.fold_in), which scores users
outside the model from a history handed over at inference. Chosen without any new or test user:
every known user with validation targets is treated as if new, folded in from their training
history alone (their learned vector unused), and the lambda with the best validation NDCG@10 of
these folded-in users is kept. With more than `max_users` such users (default 5,000), a seeded
uniform sample of that many is ranked (each lambda ranks the same sample): at 1M users ranking
every one once per lambda took over 10 minutes, and the NDCG@10 of 5,000 users has a standard
error of a few thousandths, below the spacing of the grid's values.

choose_fold_in_by_agreement: the same choice for a model fitted with no validation part (the
refit on train + validation): the lambda whose folded-in users rank most like the model ranks
them from their learned vectors (mean top-10 overlap over a seeded sample of known users).
The lambda chosen for the first fit does not carry over: the refit's embeddings are others.
"""
from __future__ import annotations

import logging

import torch

from recsys.eval.evaluation import evaluate, users_with_targets
from recsys.eval.ranking import topk
from recsys.sparse.csr import keep_entries, row_ids

log = logging.getLogger(__name__)

FOLD_IN_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
MAX_USERS = 5_000


def sample_users(target: tuple[torch.Tensor, torch.Tensor], max_users: int, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR target with the rows of at most max_users of its users with targets kept (a
    seeded uniform sample, the same for the same seed) and the other rows emptied; the target
    itself when it has no more users than that."""
    indptr, indices = target
    users = users_with_targets(indptr)
    if len(users) <= max_users:
        return target
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(indptr) - 1, dtype=torch.bool, device=indptr.device)
    keep[users[torch.randperm(len(users), generator=g)[:max_users].to(users.device)]] = True
    return keep_entries(indptr, indices, keep[row_ids(indptr)])


@torch.no_grad()
def choose_fold_in_lambda(scorer, train: tuple[torch.Tensor, torch.Tensor], val_target: tuple[torch.Tensor, torch.Tensor],
                          grid=FOLD_IN_GRID, metric: str = "ndcg@10", max_users: int = MAX_USERS,
                          seed: int = 0) -> tuple[float, dict[float, float]]:
    """Sets scorer.config.fold_in_lambda to the best of `grid`; returns (it, {lambda: val metric}).
    train/val_target: CSR (indptr, indices) over the known users; at most max_users of the users
    with validation targets are ranked (sample_users, seeded). Keeps the current value when
    there is no validation target."""
    if int(val_target[1].numel()) == 0:
        return scorer.config.fold_in_lambda, {}
    val_target = sample_users(val_target, max_users, seed)
    k = int(metric.split("@")[1])

    def value(_):
        return evaluate(scorer, val_target, train, ks=(k,), prefix="", histories=train)[0][metric]
    return _best_lambda(scorer, grid, value, f"on validation ({metric} of known users folded in)")


def _best_lambda(scorer, grid, value, how: str) -> tuple[float, dict[float, float]]:
    """Set each lambda of `grid` in turn, measure value(lambda) in eval mode, keep the best
    (ties: the smaller lambda); returns (it, {lambda: value})."""
    was = scorer.training
    scorer.eval()
    curve = {}
    for lam in grid:
        scorer.config.fold_in_lambda = float(lam)
        curve[float(lam)] = float(value(lam))
    best = max(curve, key=lambda lam: (curve[lam], -lam))
    scorer.config.fold_in_lambda = best
    scorer.train(was)
    log.info("fold-in lambda %s chosen %s: %s", best, how, {k_: round(v, 4) for k_, v in curve.items()})
    return best, curve


@torch.no_grad()
def choose_fold_in_by_agreement(scorer, seen: tuple[torch.Tensor, torch.Tensor], grid=FOLD_IN_GRID, k: int = 10,
                                max_users: int = MAX_USERS, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Sets scorer.config.fold_in_lambda to the value of `grid` whose fold-in of known users
    (from their histories `seen`, CSR over the known users) agrees best with their own top-k;
    returns (it, {lambda: mean top-k overlap}). Keeps the current value without histories."""
    if int(seen[1].numel()) == 0:
        return scorer.config.fold_in_lambda, {}
    sample = sample_users(seen, max_users, seed)
    users = users_with_targets(sample[0])
    kk = min(k, scorer.config.n_items)
    was = scorer.training
    own, _ = topk(scorer.eval(), users, kk, seen)                                 # (U, k) from U[u]
    scorer.train(was)

    def value(_):
        fold, _ = topk(scorer, users, kk, seen, histories=seen)                   # (U, k) folded in
        return (own[:, :, None] == fold[:, None, :]).any(2).float().mean()
    return _best_lambda(scorer, grid, value, f"by agreement with the learned users (top-{kk} overlap)")
