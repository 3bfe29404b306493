"""The collaborative part: s_cf[u, i] = U[u] . V[i] + b[i].

Cold items (no training interaction) have never been a positive, so V[i] carries no signal:
their score is the user's mean over the warm items ("neutral"), or, with cold_k > 0, at ranking
time (eval mode) V[c] and b[c] are borrowed from their cold_k most content-similar warm items
(coldstart.py). A user outside the model is folded in: the ridge fit of u against the trained
item vectors of their history (fold_in), no retraining.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models import coldstart
from recsys.models.learned.config import LearnedItems, ScorerConfig
from recsys.models.learned.rows import dot, sparse_rows
from recsys.models.learned.scorer import Batch, Scorer
from recsys.sparse.csr import gather_rows
from recsys.sparse.spgemm import Workspace


class Collaborative(Scorer):
    variant = "collaborative"
    fills_cold = True
    folds_in = True

    def _make_tables(self, c: ScorerConfig, buffers: dict) -> None:
        self.user_emb = nn.Embedding(c.n_users, c.dim)
        self.item_emb = nn.Embedding(c.n_items, c.dim)
        nn.init.normal_(self.user_emb.weight, std=c.init_std)
        nn.init.normal_(self.item_emb.weight, std=c.init_std)
        self.item_bias = nn.Parameter(torch.zeros(c.n_items)) if c.item_bias else None
        super()._make_tables(c, buffers)

    @classmethod
    def _declare_own(cls, c: ScorerConfig, spec, p: str) -> None:
        spec.add(p + "user_emb.weight", "F32", c.n_users, c.dim)
        spec.add(p + "item_emb.weight", "F32", c.n_items, c.dim)
        if c.item_bias:
            spec.add(p + "item_bias", "F32", c.n_items)
        super()._declare_own(c, spec, p)

    def _grow_state(self, state: dict, buffers: dict, m: int) -> None:
        W = state["item_emb.weight"]
        state["item_emb.weight"] = torch.cat([W, torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)])
        if "item_bias" in state:
            b = state["item_bias"]
            state["item_bias"] = torch.cat([b, torch.zeros(m, dtype=b.dtype, device=b.device)])
        super()._grow_state(state, buffers, m)

    @property
    def alpha(self) -> torch.Tensor:
        return torch.tensor(1.0)

    # --- item side and scores ------------------------------------------------------------------

    def _side_parts(self) -> dict:
        V, b = self.item_rows()
        return {"V": V, "b": b, **super()._side_parts()}

    def item_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(V (I, D), b (I,) or None): the item side of s_cf; ranking (eval mode) has the cold
        rows prepared once (filled or neutral)."""
        V, b = self.item_emb.weight, self.item_bias
        if not self.training:
            V, b = self._cold_rows(V, b)
        return V, b

    def batch_item_rows(self, items: torch.Tensor, sparse: bool) -> torch.Tensor:
        """V[items] (n, D) for a training batch (row-sparse gradients when `sparse`)."""
        return F.embedding(items, self.item_emb.weight, sparse=sparse)

    def _cold_rows(self, V: torch.Tensor, b: torch.Tensor | None, use_fill: bool = True):
        """coldstart.cold_rows of this model: cold rows filled (eval mode) or neutral."""
        return coldstart.cold_rows(V, b, self.item_warm,
                                   (self.fill_indptr, self.fill_indices, self.fill_weights) if use_fill else None)

    def neutralise_cold(self, s_cf: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """coldstart.neutralise of this model's (B, I) collaborative scores: in training mode
        cold items get the user's mean over warm items; in eval mode item_side() has prepared
        the cold rows already, so scores come back unchanged."""
        if not self.training:
            return s_cf
        return coldstart.neutralise(s_cf, self.item_warm, scratch)

    def _components(self, users, side: LearnedItems, items, profile, out: dict) -> None:
        out["cf"] = dot(self.user_emb(users), side.V, items)
        if side.b is not None:
            out["cf"] = out["cf"] + (side.b if items is None else side.b[items])
        super()._components(users, side, items, profile, out)

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.neutralise_cold(parts["cf"])

    def _score_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor, ws) -> torch.Tensor:
        ws = ws if ws is not None else Workspace()
        scratch = ws.matrix("scorer", out.shape[0], out.shape[1], out.dtype, out.device)    # (b, I)
        cf = torch.mm(self.user_emb(users), side.V.T, out=out)
        if side.b is not None:
            cf.add_(side.b)
        return self.neutralise_cold(cf, scratch)

    def _columns(self, users: torch.Tensor, side: LearnedItems, cols: torch.Tensor) -> torch.Tensor:
        return self.component_scores(users, side, cols)["cf"]

    # --- users outside the model ------------------------------------------------------------

    def fold_in(self, H: torch.Tensor, V: torch.Tensor, lam: float = 1.0, sub: int = 64) -> torch.Tensor:
        """User vectors for histories H ((b, I) sparse CSR) against fixed item vectors V (I, D):
        the ridge least-squares fit u = argmin sum_{j in H} (1 - u . v_j)^2 + lam |u|^2, i.e.
        u = (V_H^T V_H + lam I)^-1 V_H^T 1 (one D x D solve per user, no retraining; an empty
        history gives u = 0). Padded per `sub` users taken in order of history length (so a
        long history is padded against others of its length, not against 63 short ones):
        memory sub x max history x D floats."""
        crow, col = H.crow_indices(), H.col_indices()
        b, D = H.shape[0], V.shape[1]
        out = torch.zeros(b, D, dtype=V.dtype, device=V.device)
        eye = lam * torch.eye(D, dtype=V.dtype, device=V.device)
        lengths = crow[1:] - crow[:-1]                                                 # (b,)
        order = torch.argsort(lengths, stable=True)
        order = order[lengths[order] > 0]                                              # empty: u = 0
        for s0 in range(0, len(order), sub):
            rows = order[s0:s0 + sub]
            L = int(lengths[rows[-1]])                                                 # the longest (sorted)
            pos, row_of = gather_rows(crow, rows)
            within = pos - crow[rows][row_of]
            Vp = torch.zeros(len(rows), L, D, dtype=V.dtype, device=V.device)          # (b', L, D)
            Vp[row_of, within] = V[col[pos]]
            G = Vp.transpose(1, 2) @ Vp + eye                                           # (b', D, D)
            out[rows] = torch.linalg.solve(G, Vp.sum(1))
        return out

    def history_vectors(self, H: torch.Tensor, side: LearnedItems) -> torch.Tensor:
        """(b, D) folded-in user vectors of the (b, I) histories H."""
        return self.fold_in(H, side.V, self.config.fold_in_lambda)

    def _history_parts(self, H: torch.Tensor, side: LearnedItems, out: dict) -> None:
        out["cf"] = self.history_vectors(H, side) @ side.V.T
        if side.b is not None:
            out["cf"] = out["cf"] + side.b
        super()._history_parts(H, side, out)

    # --- spaces, projector, training ---------------------------------------------------------

    def _spaces(self) -> tuple[str, ...]:
        return ("collaborative",) + super()._spaces()

    def _projector(self, tables: dict) -> None:
        tables["items/collaborative"] = self.item_emb.weight.detach()
        super()._projector(tables)

    def _sparse(self, out: list) -> None:
        out += [self.user_emb.weight, self.item_emb.weight]
        if self.item_bias is not None:
            out.append(self.item_bias)
        super()._sparse(out)

    def batch_scores(self, batch: Batch) -> None:
        """U[users] . V[pos] + b[pos] (B, 1) and against the shared negatives; reg: the squared
        norms of U[users] and V[pos] (the l2 term)."""
        s = batch.sparse
        uu = F.embedding(batch.uniq if batch.per_user else batch.users, self.user_emb.weight, sparse=s)  # (b or B, D)
        u = uu[batch.inv] if batch.per_user else uu                                       # (B, D)
        Vp = self.batch_item_rows(batch.pos_items, s)                                     # (B, D)
        Vn = self.batch_item_rows(batch.neg_items, s)                                     # (N, D)
        pos = (u * Vp).sum(1, keepdim=True)                                               # (B, 1)
        neg = uu @ Vn.T
        if self.item_bias is not None:
            pos = pos + sparse_rows(self.item_bias, batch.pos_items, s)[:, None]
            neg = neg + sparse_rows(self.item_bias, batch.neg_items, s)
        batch.pos["cf"], batch.neg["cf"] = pos, neg
        batch.reg["cf"] = u.pow(2).sum() + Vp.pow(2).sum()
        super().batch_scores(batch)
