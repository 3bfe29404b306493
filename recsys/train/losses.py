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


def sampled_softmax_loss_per_user(pos: torch.Tensor, neg_user: torch.Tensor, inv: torch.Tensor,
                                  clashes: torch.Tensor) -> torch.Tensor:
    """sampled_softmax_loss for rows that share their user's negatives, without the (B, N)
    block: pos (B,) positive scores, neg_user (b, N) each distinct user's negative scores, inv
    (B,) the row's user in 0..b-1, clashes (B,) how many of the N negatives are the row's own
    positive (masked there: their score is the positive's). Row i's loss is
        -s_i + log(exp(s_i) + sum_j exp(n_uj) - c_i exp(s_i)),   sum_j from logsumexp_j n_uj,
    the same value as the masked (B, 1 + N) cross-entropy, with b x N work instead of B x N."""
    lse = torch.logsumexp(neg_user, dim=1)[inv]                                     # (B,)
    m = torch.maximum(lse, pos).detach()
    inner = torch.exp(lse - m) + (1 - clashes.to(pos.dtype)) * torch.exp(pos - m)
    inner = torch.maximum(inner, torch.exp(pos - m))        # the sum holds exp(s_i) at least
    return (torch.log(inner) + m - pos).mean()


sampled_softmax_loss.per_user = sampled_softmax_loss_per_user      # what Scorer.batch_loss uses for such rows
LOSSES = {"bpr": bpr_loss, "softmax": sampled_softmax_loss}
