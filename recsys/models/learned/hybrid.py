"""The hybrid: both parts, blended per user.

    s[u, i] = alpha * z_u(s_cf)[i] + (1 - alpha) * z_u(s_ct)[i]

z_u standardises a user's scores over the whole catalog (normalise.standardise): the raw scores
live on unrelated scales (dot products of free vectors against dot products of pooled token
vectors) that drift during training, so a fixed alpha on raw scores would mean something
different for every model and user. After z_u both components have mean 0 and unit spread
for every user, alpha is the share of ranking influence, and because z_u is increasing,
alpha = 1 ranks exactly as `collaborative` and alpha = 0 exactly as `content`.

Ranking in one matmul: a user's mean and spread over the catalog of a dot-product score are
quadratic forms of the user vector. With the item-side means mu and covariance S (unbiased, as
torch.std) of the rows [V_i, b_i] (cold rows neutral),
    mean_u = u . mu_V + mu_b,   var_u = u S_V u + 2 u . S_Vb + S_bb,
and likewise for the content part [C_i]. So the blend
    a (s_cf - mean_cf) / std_cf + (1 - a) (s_ct - mean_ct) / std_ct
is ONE matmul of [u k1, P k2, k1, -(k1 mean_cf + k2 mean_ct)] (b, 2D + 2) against the item
table [V, C, b, 1] (I, 2D + 2), k1 = a / std_cf, k2 = (1 - a) / std_ct: no pass over the
(b, I) scores besides writing them (the plain expression makes about nine).
"""
from __future__ import annotations

import torch
from torch import nn

from recsys.models.learned.collaborative import Collaborative
from recsys.models.learned.config import HybridSide, LearnedItems, ScorerConfig
from recsys.models.learned.content import Content
from recsys.models.normalise import standardise


def blend(alpha, s_cf: torch.Tensor, s_ct: torch.Tensor) -> torch.Tensor:
    """The one blend formula: alpha z_u(s_cf) + (1 - alpha) z_u(s_ct), (b, n) each."""
    return alpha * standardise(s_cf) + (1 - alpha) * standardise(s_ct)


class Hybrid(Collaborative, Content):
    variant = "hybrid"

    def _make_tables(self, c: ScorerConfig, buffers: dict) -> None:
        super()._make_tables(c, buffers)
        if c.learn_alpha:
            a = torch.tensor(float(c.alpha)).clamp(1e-4, 1 - 1e-4)
            self.alpha_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))   # alpha = sigmoid

    @classmethod
    def _declare_own(cls, c: ScorerConfig, spec, p: str) -> None:
        super()._declare_own(c, spec, p)
        if c.learn_alpha:
            spec.add(p + "alpha_logit", "F32")

    @property
    def learns_alpha(self) -> bool:
        return bool(self.config.learn_alpha)

    @property
    def alpha(self) -> torch.Tensor:
        """The blend weight of the collaborative part (exactly config.alpha unless learned)."""
        if not self.config.learn_alpha:
            return torch.tensor(float(self.config.alpha))
        return torch.sigmoid(self.alpha_logit)

    def _spaces(self) -> tuple[str, ...]:
        return super()._spaces() + ("hybrid",)

    # --- scores -----------------------------------------------------------------------------

    def item_side(self) -> LearnedItems:
        side = super().item_side()
        if torch.is_grad_enabled():
            return side
        return LearnedItems(side.V, side.b, side.C, self._hybrid_side(side))

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return blend(self.alpha, self.neutralise_cold(parts["cf"]), parts["content"])

    def _score_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor, ws) -> torch.Tensor:
        h = self._hybrid_of(side)
        return torch.mm(self._hybrid_lhs(users, side, h, out.dtype), h.R.T, out=out)

    def _columns(self, users: torch.Tensor, side: LearnedItems, cols: torch.Tensor) -> torch.Tensor:
        h = self._hybrid_of(side)
        return self._hybrid_lhs(users, side, h, h.R.dtype) @ h.R[cols].T

    def score_histories(self, H: torch.Tensor, side: LearnedItems, out=None, ws=None) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().score_histories(H, side, out, ws)
        # ranking: the known users' one matmul, with the folded-in vectors
        u, P = self.history_vectors(H, side), self.history_profile(H, side)            # (b, D) each
        h = self._hybrid_of(side)
        lhs = self._hybrid_rows(u, P, h, h.R.dtype)                                    # (b, 2D + 2)
        return torch.mm(lhs, h.R.T, out=out) if out is not None else lhs @ h.R.T

    # --- the one-matmul tables (module docstring) -------------------------------------------------

    def _hybrid_of(self, side: LearnedItems) -> HybridSide:
        return side.hybrid if side.hybrid is not None else self._hybrid_side(side)

    def _hybrid_side(self, side: LearnedItems) -> HybridSide:
        V, C = side.V.detach(), side.C.detach()
        I = V.shape[0]
        if self.training:                   # training-mode tables keep raw cold rows
            V, b = self._cold_rows(V, side.b, use_fill=False)
        else:
            b = side.b
        b = b.detach() if b is not None else torch.zeros(I, dtype=V.dtype, device=V.device)
        ones = torch.ones(I, 1, dtype=V.dtype, device=V.device)
        R = torch.cat([V, C, b[:, None], ones], 1).contiguous()                      # (I, 2D + 2)

        def stats(X):                                   # float64 means and unbiased covariance
            X = X.double()
            mu = X.mean(0)
            Xc = X - mu
            return mu, Xc.T @ Xc / max(I - 1, 1)
        mu_cf, S_cf = stats(torch.cat([V, b[:, None]], 1))                            # (D + 1,), (D + 1, D + 1)
        mu_ct, S_ct = stats(C)
        return HybridSide(R, mu_cf, S_cf, mu_ct, S_ct)

    def _hybrid_lhs(self, users: torch.Tensor, side: LearnedItems, h: HybridSide, dtype) -> torch.Tensor:
        """(b, 2D + 2): the users' row of the one-matmul hybrid, against h.R's rows."""
        return self._hybrid_rows(self.user_emb(users), self.user_profile(users, side.C), h, dtype)

    def _hybrid_rows(self, u: torch.Tensor, P: torch.Tensor, h: HybridSide, dtype) -> torch.Tensor:
        """(b, 2D + 2) rows of the one-matmul hybrid for collaborative vectors u (b, D) and
        content profiles P (b, D): known users' (learned u) or folded-in histories'."""
        u1 = torch.cat([u, torch.ones(len(u), 1, dtype=u.dtype, device=u.device)], 1).double()   # [u, 1]
        mean_cf = u1 @ h.mu_cf
        std_cf = ((u1 @ h.S_cf) * u1).sum(1).clamp(min=0).sqrt()
        Pd = P.double()
        mean_ct = Pd @ h.mu_ct
        std_ct = ((Pd @ h.S_ct) * Pd).sum(1).clamp(min=0).sqrt()
        a = float(self.alpha)
        k1 = a / (std_cf + 1e-8)
        k2 = (1 - a) / (std_ct + 1e-8)
        return torch.cat([u.double() * k1[:, None], Pd * k2[:, None], k1[:, None],
                          -(k1 * mean_cf + k2 * mean_ct)[:, None]], 1).to(dtype)      # (b, 2D + 2)
