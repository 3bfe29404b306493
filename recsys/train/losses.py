"""Ranking losses on (B,) positive scores against (B, N) negative scores.

`mask` (B, N) bool marks negatives to ignore (a sampled negative that is the row's positive).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bayesian personalised ranking: mean over (user, pos, neg) pairs of -log sigmoid(pos - neg)."""
    l = -F.logsigmoid(pos[:, None] - neg)                              # (B, N)
    if mask is None:
        return l.mean()
    keep = ~mask
    return (l * keep).sum() / keep.sum().clamp(min=1)


def sampled_softmax_loss(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Cross-entropy of the positive against its N uniformly sampled negatives (uniform
    sampling shifts every logit by the same log-probability, so no correction is needed)."""
    if mask is not None:
        neg = neg.masked_fill(mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)                     # (B, 1 + N)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


LOSSES = {"bpr": bpr_loss, "softmax": sampled_softmax_loss}
