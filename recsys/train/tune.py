"""Choices made on validation data after a fit.

choose_fold_in_lambda: the ridge weight of the MF fold-in (Scorer.fold_in), which scores users
outside the model from a history handed over at inference. Chosen without any new or test user:
every known user with validation targets is treated as if new, folded in from their training
history alone (their learned vector unused), and the lambda with the best validation NDCG@10 of
these folded-in users is kept.
"""
from __future__ import annotations

import logging

import torch

from recsys.eval.evaluation import evaluate

log = logging.getLogger(__name__)

FOLD_IN_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@torch.no_grad()
def choose_fold_in_lambda(scorer, train: tuple[torch.Tensor, torch.Tensor], val_target: tuple[torch.Tensor, torch.Tensor],
                          grid=FOLD_IN_GRID, metric: str = "ndcg@10") -> tuple[float, dict[float, float]]:
    """Sets scorer.config.fold_in_lambda to the best of `grid`; returns (it, {lambda: val metric}).
    train/val_target: CSR (indptr, indices) over the known users. Keeps the current value when
    there is no validation target."""
    if int(val_target[1].numel()) == 0:
        return scorer.config.fold_in_lambda, {}
    was = scorer.training
    scorer.eval()
    curve = {}
    k = int(metric.split("@")[1])
    for lam in grid:
        scorer.config.fold_in_lambda = float(lam)
        m, _ = evaluate(scorer, val_target, train, ks=(k,), prefix="", histories=train)
        curve[float(lam)] = m[metric]
    best = max(curve, key=lambda lam: (curve[lam], -lam))
    scorer.config.fold_in_lambda = best
    scorer.train(was)
    log.info("fold-in lambda %s chosen on validation (%s of known users folded in: %s)", best, metric,
             {k_: round(v, 4) for k_, v in curve.items()})
    return best, curve
