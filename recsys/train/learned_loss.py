"""The learned scorer's training objective over one batch (train/module.py's RecsysModule):
each part of the scorer scores the batch's rows (Scorer.batch_scores, models/learned/), and
this module turns those scores into losses.

    losses[part]  loss_fn(pos (B,), neg (B, N), mask (B, N)) per part ("cf", "content"),
                  one of train/losses.py; a negative equal to the row's positive is masked
    alpha         the hybrid with learn_alpha: the loss of the blend that trains alpha alone
    l2            l2 > 0: l2 * (|U[u]|^2 + |V[pos]|^2) summed over the batch / B

The training loss is their sum. Only the rows the batch needs are read: U[users], V and b of
pos and neg, and C of the union of pos, neg and the training histories of the batch's distinct
users (for their content profiles), each pooled from its own tokens. The losses and gradients
are those of scoring against the whole catalog's item_side(), without its (I, D) content pass.
sparse=True: the scorer's sparse_tables() get row-sparse gradients (their other rows none).

max_history > 0 (an approximation, off by default): the training profile of a user with a
longer history pools max_history of its items drawn uniformly with replacement (an unbiased
estimate of the mean; batches are drawn per interaction, so heavy users are in almost every
batch, and at 1M users their histories made up ~190,000 of the items a batch pooled). The
profile used at ranking time always pools the whole history.
"""
from __future__ import annotations

import torch

from recsys.models.learned import Batch, Scorer
from recsys.models.normalise import standardise


def batch_loss(scorer: Scorer, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, loss_fn,
               l2: float = 0.0, sparse: bool = False, max_history: int = 0) -> dict[str, torch.Tensor]:
    """The losses of one batch (module docstring): (B,) users and their (B,) positive items
    against (N,) negatives shared by the whole batch, one (B, N) matmul per part."""
    uniq, inv = torch.unique(users, return_inverse=True)                          # (b,), (B,)
    # the negatives' scores depend on the user only: with batches of whole histories
    # (batching="users", b << B) one (b, N) product serves every row of a user, and the
    # softmax loss sums each user's exp(negatives) once (no (B, N) block at all)
    per_user = 2 * len(uniq) <= len(users)
    per_user_loss = getattr(loss_fn, "per_user", None)      # train/losses.py: softmax has one
    lse_path = per_user and per_user_loss is not None and not scorer.learns_alpha
    clash = None if lse_path else pos[:, None] == neg[None, :]                    # (B, N)
    batch = Batch(users, pos, neg, uniq, inv, per_user, sparse, max_history)
    scorer.batch_scores(batch)
    if lse_path:       # softmax over whole histories: each user's negatives summed once
        sn = torch.sort(neg).values
        hits = torch.searchsorted(sn, pos, right=True) - torch.searchsorted(sn, pos)   # (B,) clashes
        losses = {name: per_user_loss(batch.pos[name][:, 0], batch.neg[name], inv, hits) for name in batch.pos}
    else:
        neg_s = {name: v[inv] if per_user else v for name, v in batch.neg.items()}     # (B, N)
        losses = {name: loss_fn(batch.pos[name][:, 0], neg_s[name], clash) for name in batch.pos}
    if scorer.learns_alpha:
        losses["alpha"] = alpha_loss(scorer.alpha, batch.pos, neg_s, clash, loss_fn)
    if l2 > 0 and "cf" in batch.reg:
        losses["l2"] = l2 * batch.reg["cf"] / len(users)
    return losses


def alpha_loss(a: torch.Tensor, pos_s: dict, neg_s: dict, clash, loss_fn) -> torch.Tensor:
    """Loss on the blended score that trains alpha alone: components detached, per-user
    mean/std estimated on the batch's shared negatives, a uniform sample of the catalog
    (the exact full-catalog statistics used at ranking time would cost a (B, I) matmul)."""
    z = {}
    for n in pos_s:
        std, mean = torch.std_mean(neg_s[n].detach(), dim=1, keepdim=True, correction=0)
        z[n] = (standardise(pos_s[n].detach(), mean, std), standardise(neg_s[n].detach(), mean, std))
    blend_pos = a * z["cf"][0] + (1 - a) * z["content"][0]
    blend_neg = a * z["cf"][1] + (1 - a) * z["content"][1]
    return loss_fn(blend_pos[:, 0], blend_neg, clash)
