"""The scorer: users, items and content tokens as embedding tables, three scores as matmuls.

    collaborative  s_cf[u, i] = U[u] . V[i] + b[i]
    content        s_ct[u, i] = P[u] . C[i]
                   C[i] = sum_t w(i, t) E[t]        TF-IDF weighted pool of token embeddings
                   P[u] = mean_{j in H(u)} C[j]     mean content vector of u's history H(u)
    hybrid         s[u, i] = alpha * z_u(s_cf)[i] + (1 - alpha) * z_u(s_ct)[i]

z_u standardises a user's scores over the whole catalog: z_u(s)[i] = (s[i] - mean_u) / std_u.
Why that scale: the raw scores live on unrelated scales (dot products of free vectors against
dot products of pooled token vectors) that drift during training, so a fixed alpha on raw scores
would mean something different for every model and user. After z_u both components have mean 0
and unit spread across the catalog for every user, alpha is the share of ranking influence, and
because z_u is increasing, alpha = 1 ranks exactly as `collaborative` and alpha = 0 exactly as
`content`.

Cold items (no training interaction) have never been a positive, so V[i] carries no signal: their
collaborative score is set to the user's mean collaborative score over the warm items
("neutral"), which is z = 0 after standardisation, and they are ranked by content alone; or,
with cold_k > 0, at ranking time (eval mode) V[c] and b[c] are borrowed from the cold item's
cold_k most content-similar warm items (coldstart.py), so the collaborative part has a view too.

Training (batch_loss, called by train/module.py) reads only the rows a batch needs: U and V, b of
its users, positives and shared negatives, and C of the union of those items and of the batch
users' history items (for P), pooled from their tokens; the losses and gradients equal those of
scoring against the whole catalog. With sparse=True the large tables (sparse_tables()) get
row-sparse gradients, for lazy Adam.

Worked example (shapes): 3 users, 5 items, 7 tokens, dim 4; `Scorer(cfg, bags..., history...)`;
`scorer(torch.tensor([0, 2]))` -> (2, 5) scores of users 0 and 2 against every item.
The module has no Lightning, Hydra or pandas; it follows the device of its parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models import coldstart
from recsys.models.base import Model, is_histories
from recsys.models.normalise import standardise
from recsys.sparse.csr import gather_rows

VARIANTS = ("collaborative", "content", "hybrid")


@dataclass
class ScorerConfig:
    n_users: int
    n_items: int
    n_tokens: int
    variant: str = "hybrid"
    dim: int = 64
    alpha: float = 0.5          # hybrid weight of the collaborative part, in [0, 1]
    learn_alpha: bool = False   # learn alpha (through a sigmoid) instead of fixing it
    item_bias: bool = True      # b[i] in the collaborative score
    init_std: float = 0.1
    cold_k: int = 0             # cold items borrow V, b from this many content neighbours (coldstart.py)
    cold_scale: float = 1.0     # ... times this factor
    token_pre_dim: int = 0      # > 0: E = token_pre (T, token_pre_dim) projected to dim (pretrained tokens)
    token_pre_train: bool = False   # fine-tune token_pre too (False: frozen, only the projection learns)
    fold_in_lambda: float = 1.0     # ridge weight of the fold-in of users outside the model (tune.py picks it)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r} is not one of {VARIANTS}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"model.alpha={self.alpha} is outside [0, 1]")
        if self.dim < 1:
            raise ValueError(f"model.dim={self.dim} must be >= 1")

    @property
    def uses_cf(self) -> bool:
        return self.variant in ("collaborative", "hybrid")

    @property
    def uses_content(self) -> bool:
        return self.variant in ("content", "hybrid")

    def to_json(self) -> dict:
        return asdict(self)


# names of the data buffers a Scorer holds (all saved in its state_dict, so an export is complete)
BUFFERS = ("tok_indptr", "tok_indices", "tok_weights", "hist_indptr", "hist_indices", "item_warm")
# the cold items' fill matrix (coldstart.py); empty (no filled item) when absent
FILL = ("fill_indptr", "fill_indices", "fill_weights")


def empty_fill(n_items: int) -> dict[str, torch.Tensor]:
    return {"fill_indptr": torch.zeros(n_items + 1, dtype=torch.long),
            "fill_indices": torch.zeros(0, dtype=torch.long), "fill_weights": torch.zeros(0)}


@dataclass(frozen=True)
class HybridSide:
    """The hybrid's item side for the one-matmul ranking (see _hybrid_into): R = [V, C, b, 1]
    (I, 2D + 2), the float64 means and unbiased covariances of [V, b] and of C."""
    R: torch.Tensor
    mu_cf: torch.Tensor
    S_cf: torch.Tensor
    mu_ct: torch.Tensor
    S_ct: torch.Tensor


@dataclass(frozen=True)
class LearnedItems:
    """Everything item-side of a Scorer, computed once per ranking pass (item_side()).
    V (I, D), b (I,) or None: collaborative rows (in eval mode with cold rows prepared:
    coldstart.cold_rows); C (I, D): pooled content vectors; hybrid: the one-matmul tables
    (hybrid variant, computed when no gradient is recorded)."""
    V: torch.Tensor | None
    b: torch.Tensor | None
    C: torch.Tensor | None
    hybrid: HybridSide | None = None


class Scorer(Model):
    def __init__(self, config: ScorerConfig, buffers: dict[str, torch.Tensor]):
        """buffers: tok_indptr (I+1,), tok_indices (T_nnz,), tok_weights (T_nnz,) float: the
        TF-IDF bags; hist_indptr (U+1,), hist_indices (H,): each user's training items (for the
        content profile); item_warm (I,) bool: item has a training interaction."""
        super().__init__()
        self.config = c = config
        missing = [b for b in BUFFERS if b not in buffers]
        if missing:
            raise ValueError(f"Scorer needs buffers {missing}")
        buffers = {**empty_fill(c.n_items), **buffers}
        for name in BUFFERS + FILL:
            t = torch.as_tensor(buffers[name])
            t = t.bool() if name == "item_warm" else (t.float() if name.endswith("_weights") else t.long())
            self.register_buffer(name, t.clone())
        if len(self.tok_indptr) != c.n_items + 1 or len(self.hist_indptr) != c.n_users + 1:
            raise ValueError("buffer sizes do not match n_users / n_items in the config")
        if c.uses_cf:
            self.user_emb = nn.Embedding(c.n_users, c.dim)
            self.item_emb = nn.Embedding(c.n_items, c.dim)
            nn.init.normal_(self.user_emb.weight, std=c.init_std)
            nn.init.normal_(self.item_emb.weight, std=c.init_std)
            self.item_bias = nn.Parameter(torch.zeros(c.n_items)) if c.item_bias else None
        if c.uses_content and c.token_pre_dim > 0:
            # pretrained token table P, rescaled to unit spread; E = P W^T with W (dim, d_pre)
            # initialised so that E's entries have spread init_std like a learned table's
            pre = buffers.get("token_pre")
            if pre is None or tuple(pre.shape) != (c.n_tokens, c.token_pre_dim):
                raise ValueError(f"token_pre_dim={c.token_pre_dim} needs a token_pre buffer of shape "
                                 f"({c.n_tokens}, {c.token_pre_dim})")
            pre = torch.as_tensor(pre).float()
            self.token_pre = nn.Parameter(pre / pre.std().clamp(min=1e-8), requires_grad=c.token_pre_train)
            self.token_proj = nn.Linear(c.token_pre_dim, c.dim, bias=False)
            nn.init.normal_(self.token_proj.weight, std=c.init_std / c.token_pre_dim ** 0.5)
        elif c.uses_content:
            self.token_emb = nn.Embedding(c.n_tokens, c.dim)
            nn.init.normal_(self.token_emb.weight, std=c.init_std)
        if c.variant == "hybrid" and c.learn_alpha:
            a = torch.tensor(float(c.alpha)).clamp(1e-4, 1 - 1e-4)
            self.alpha_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))   # alpha = sigmoid

    # --- item side: computed once per ranking pass ------------------------------------------

    @property
    def alpha(self) -> torch.Tensor:
        """The blend weight of the collaborative part (exactly config.alpha unless learned)."""
        if self.config.variant == "collaborative":
            return torch.tensor(1.0)
        if self.config.variant == "content":
            return torch.tensor(0.0)
        if not self.config.learn_alpha:
            return torch.tensor(float(self.config.alpha))
        return torch.sigmoid(self.alpha_logit)

    def token_table(self) -> torch.Tensor:
        """E: (T, D) token embeddings: learned, or the projected pretrained table."""
        if self.config.token_pre_dim > 0:
            return self.token_proj(self.token_pre)                               # (T, d_pre) -> (T, D)
        return self.token_emb.weight

    def item_content(self) -> torch.Tensor:
        """C: (I, D), the TF-IDF weighted sum of each item's token embeddings (0 for no tokens)."""
        return F.embedding_bag(self.tok_indices, self.token_table(), self.tok_indptr[:-1],
                               mode="sum", per_sample_weights=self.tok_weights)

    @torch.no_grad()
    def projector_tables(self) -> dict[str, torch.Tensor]:
        c, tables = self.config, {}
        if c.uses_cf:
            tables["items/collaborative"] = self.item_emb.weight.detach()
        if c.uses_content:
            tables["items/content"] = self.item_content().detach()
        return tables

    def baked(self) -> "Scorer":
        """The same scorer with a pretrained token table replaced by its projection E (a plain
        learned table): what the export stores, smaller and with identical scores."""
        if self.config.token_pre_dim == 0:
            return self
        from dataclasses import replace
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("token_pre", "token_proj"))}
        with torch.no_grad():
            state["token_emb.weight"] = self.token_table().detach().clone()
        out = Scorer(replace(self.config, token_pre_dim=0, token_pre_train=False),
                     {k: state[k] for k in BUFFERS + FILL})
        out.load_state_dict(state, strict=True)
        return out.to(self.tok_indices.device).train(self.training)

    kind = "learned"
    writes_out = True

    def item_side(self) -> LearnedItems:
        """Everything item-side the user scores need; reuse it across user chunks."""
        V = b = C = None
        if self.config.uses_cf:
            V = self.item_emb.weight                                               # (I, D)
            b = self.item_bias if self.item_bias is not None else None             # (I,)
            if not self.training:                  # ranking: cold rows prepared once, item side
                V, b = self._cold_rows(V, b)
        if self.config.uses_content:
            C = self.item_content()                                                # (I, D)
        side = LearnedItems(V, b, C)
        if self.config.variant == "hybrid" and not torch.is_grad_enabled():
            side = LearnedItems(V, b, C, self._hybrid_side(side))
        return side

    def _cold_rows(self, V: torch.Tensor, b: torch.Tensor | None, use_fill: bool = True):
        """coldstart.cold_rows of this model: cold rows filled (eval mode) or neutral."""
        return coldstart.cold_rows(V, b, self.item_warm, (self.fill_indptr, self.fill_indices, self.fill_weights) if use_fill else None)

    @classmethod
    def declare_tensors(cls, c: ScorerConfig, spec, p: str = "") -> None:
        """What an export of a Scorer holds (see MemoryModel.declare_tensors): the baked form,
        token table projected (token_pre_dim 0)."""
        U, I, T = c.n_users, c.n_items, c.n_tokens
        spec.add_csr(p + "tok", I, T, p + "tok_weights")
        spec.add_csr(p + "hist", U, I, None)
        spec.add_csr(p + "fill", I, I, p + "fill_weights")
        spec.add(p + "item_warm", "BOOL", I)
        if c.uses_cf:
            spec.add(p + "user_emb.weight", "F32", U, c.dim)
            spec.add(p + "item_emb.weight", "F32", I, c.dim)
            if c.item_bias:
                spec.add(p + "item_bias", "F32", I)
        if c.uses_content:
            spec.add(p + "token_emb.weight", "F32", T, c.dim)
        if c.variant == "hybrid" and c.learn_alpha:
            spec.add(p + "alpha_logit", "F32")

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "Scorer":
        scorer = cls(ScorerConfig(**config), {k: state[k] for k in BUFFERS + FILL if k in state})
        scorer.load_state_dict(state, strict=True)
        return scorer

    def grow(self, bags) -> "Scorer":
        """The scorer with bags.n_items new items (extend.py): C[new] pooled from the token
        table; the collaborative part gives them the neutral score, or with cold_k > 0 borrows
        V, b from their content neighbours among the warm items (coldstart.py)."""
        from dataclasses import replace

        from recsys.models.extend import cat_bags, fill_rows
        c, m = self.config, bags.n_items
        n_old = c.n_items
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        tok = cat_bags(state["tok_indptr"], state["tok_indices"], state["tok_weights"], bags)
        state["tok_indptr"], state["tok_indices"], state["tok_weights"] = tok
        warm = state["item_warm"]
        state["item_warm"] = torch.cat([warm, torch.zeros(m, dtype=torch.bool, device=warm.device)])
        if c.uses_cf:
            W = state["item_emb.weight"]
            state["item_emb.weight"] = torch.cat([W, torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)])
            if "item_bias" in state:
                b = state["item_bias"]
                state["item_bias"] = torch.cat([b, torch.zeros(m, dtype=b.dtype, device=b.device)])
        fill = fill_rows(state, (state["fill_indptr"], state["fill_indices"], state["fill_weights"]), n_old, m,
                         c.n_tokens, warm, c.cold_k if c.uses_cf else 0, c.cold_scale)
        state["fill_indptr"], state["fill_indices"], state["fill_weights"] = fill
        buffers = {k: state[k] for k in BUFFERS + FILL}
        if c.token_pre_dim > 0:
            buffers["token_pre"] = state["token_pre"]
        out = Scorer(replace(c, n_items=n_old + m), buffers)
        out.load_state_dict(state, strict=True)
        return out.to(self.tok_indices.device).train(self.training)

    # --- user side ------------------------------------------------------------------------

    def profile_from_items(self, indptr: torch.Tensor, indices: torch.Tensor,
                           rows: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """P: (B, D), mean of C over the items of CSR rows `rows` (zeros for an empty row).
        Each distinct row is pooled once (training batches repeat heavy users many times), by
        one fused embedding_bag (no (history, D) temporary, forward or backward)."""
        uniq, inv = torch.unique(rows, return_inverse=True)
        pos, _ = gather_rows(indptr, uniq)
        lengths = indptr[uniq + 1] - indptr[uniq]
        offsets = torch.cumsum(lengths, 0) - lengths                                 # (b,)
        P = F.embedding_bag(indices[pos], C, offsets, mode="mean")                   # (b, D), 0 if empty
        return P[inv]

    def user_profile(self, users: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return self.profile_from_items(self.hist_indptr, self.hist_indices, users, C)

    # --- scores -----------------------------------------------------------------------------

    def component_scores(self, users: torch.Tensor, side: LearnedItems, items: torch.Tensor | None = None,
                         profile: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw scores per component, for (B,) users against
        items None: the whole catalog -> (B, I); items (N,): the same N items for every user
        -> (B, N), one matmul; items (B, N): each user's own N items -> (B, N).
        profile: the users' content profile P (B, D) when the caller has it (a training step
        scores the positives and the negatives of one batch with one profile)."""
        out = {}
        if self.config.uses_cf:
            out["cf"] = _dot(self.user_emb(users), side.V, items)
            if side.b is not None:
                out["cf"] = out["cf"] + (side.b if items is None else side.b[items])
        if self.config.uses_content:
            P = self.user_profile(users, side.C) if profile is None else profile
            out["content"] = _dot(P, side.C, items)
        return out

    def neutralise_cold(self, s_cf: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """coldstart.neutralise of this model's (B, I) collaborative scores: in training mode
        cold items get the user's mean over warm items; in eval mode item_side() has prepared
        the cold rows already, so scores come back unchanged."""
        if not self.training:
            return s_cf
        return coldstart.neutralise(s_cf, self.item_warm, scratch)

    standardise = staticmethod(standardise)

    def score_users(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor | None = None,
                    ws=None) -> torch.Tensor:
        """(B,) user indices -> (B, I) scores against the whole catalog. With `out` (and no
        autograd), written into it with in-place steps and one reused scratch block instead of
        the half-dozen (B, I) temporaries of the plain expression (on a CPU each fresh one costs
        page faults worth more than the matmul); the values are bitwise the same."""
        if out is None or torch.is_grad_enabled():
            return self._combine(self.component_scores(users, side))
        return self._score_into(users, side, out, ws)

    def _score_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor, ws) -> torch.Tensor:
        from recsys.sparse.spgemm import Workspace
        c = self.config
        ws = ws if ws is not None else Workspace()
        scratch = ws.matrix("scorer", out.shape[0], out.shape[1], out.dtype, out.device)    # (b, I)
        cf = content = None
        if c.variant == "hybrid":
            return self._hybrid_into(users, side, out)
        if c.uses_cf:
            cf = torch.mm(self.user_emb(users), side.V.T, out=out)
            if side.b is not None:
                cf.add_(side.b)
            cf = self.neutralise_cold(cf, scratch)
            if c.variant == "collaborative":
                return cf
        if c.uses_content:
            C = side.C
            content = torch.mm(self.user_profile(users, C), C.T, out=scratch if cf is not None else out)
            if c.variant == "content":
                return content
        a = self.alpha
        z_cf, z_content = self._standardise_(cf), self._standardise_(content)
        z_content.mul_(1 - a)
        return z_cf.mul_(a).add_(z_content)

    # --- the hybrid in one matmul ---------------------------------------------------------
    # z_u standardises over the catalog, and a user's mean and spread over the catalog of a
    # dot-product score are quadratic forms of the user vector: with the item-side means mu
    # and covariance S (unbiased, as torch.std) of the rows [V_i, b_i] (cold rows neutral),
    #     mean_u = u . mu_V + mu_b,   var_u = u S_V u + 2 u . S_Vb + S_bb,
    # and likewise for the content part [C_i]. So the blend
    #     a (s_cf - mean_cf) / std_cf + (1 - a) (s_ct - mean_ct) / std_ct
    # is ONE matmul of [u k1, P k2, k1, -(k1 mean_cf + k2 mean_ct)] (b, 2D + 2) against the item
    # table [V, C, b, 1] (I, 2D + 2), k1 = a / std_cf, k2 = (1 - a) / std_ct: no pass over the
    # (b, I) scores besides writing them (the plain expression makes about nine).

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

    def _hybrid_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor) -> torch.Tensor:
        h = side.hybrid if side.hybrid is not None else self._hybrid_side(side)
        return torch.mm(self._hybrid_lhs(users, side, h, out.dtype), h.R.T, out=out)

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

    def score_columns(self, who: torch.Tensor, side: LearnedItems, cols: torch.Tensor | None = None,
                      out=None, ws=None) -> torch.Tensor:
        """(b, C) scores of the candidate columns only, b x C x D work: the hybrid's one matmul
        against the candidates' rows of [V, C, b, 1] (the catalog's means and spreads come from
        the item side), the single variants' products with V[cols] or C[cols] (cold rows are
        prepared on the item side in eval mode, so these are the full ranking's scores)."""
        if cols is None or is_histories(who) or self.training or torch.is_grad_enabled():
            return super().score_columns(who, side, cols, out, ws)
        if self.config.variant == "hybrid":
            h = side.hybrid if side.hybrid is not None else self._hybrid_side(side)
            return self._hybrid_lhs(who, side, h, h.R.dtype) @ h.R[cols].T
        parts = self.component_scores(who, side, cols)
        return parts["cf"] if self.config.variant == "collaborative" else parts["content"]

    # --- similar items and users (models/similar.py) ---------------------------------------

    def own_spaces(self, of: str) -> tuple[str, ...]:
        c = self.config
        return (("collaborative",) if c.uses_cf else ()) + (("content",) if c.uses_content else ()) + \
            (("hybrid",) if c.variant == "hybrid" else ())

    def default_space(self, of: str) -> str:
        return self.config.variant

    @torch.no_grad()
    def own_similarity(self, of: str, space: str):
        """Cosine of item vectors V / content vectors C (users: U / profiles P); hybrid: alpha-weighted."""
        from recsys.models.similar import DenseCosine
        side = self.item_side()
        tables, weights = [], []
        a = float(self.alpha)
        if space in ("collaborative", "hybrid"):
            tables.append(side.V if of == "items" else self.user_emb.weight)
            weights.append(a if space == "hybrid" else 1.0)
        if space in ("content", "hybrid"):
            users = torch.arange(self.config.n_users, device=self.hist_indptr.device)
            tables.append(side.C if of == "items" else self.user_profile(users, side.C))
            weights.append(1 - a if space == "hybrid" else 1.0)
        return DenseCosine(tables, weights)

    @staticmethod
    def _standardise_(s: torch.Tensor) -> torch.Tensor:
        std, mean = torch.std_mean(s, dim=1, keepdim=True)
        return s.sub_(mean).div_(std + 1e-8)

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

    def score_histories(self, H: torch.Tensor, side: LearnedItems, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse CSR histories of users who need not be in the vocabulary -> (b, I)
        scores, without retraining: the content profile is the mean content vector of the
        history's items (exactly as for a known user); the collaborative vector is folded in
        (fold_in, ridge weight config.fold_in_lambda) against the trained item vectors."""
        rows = torch.arange(H.shape[0], device=H.crow_indices().device)
        c = self.config
        u = self.fold_in(H, side.V, c.fold_in_lambda) if c.uses_cf else None              # (b, D)
        P = self.profile_from_items(H.crow_indices(), H.col_indices(), rows, side.C) if c.uses_content else None
        if c.variant == "hybrid" and not torch.is_grad_enabled():
            # ranking: the known users' one matmul (_hybrid_into), with the folded-in vectors
            h = side.hybrid if side.hybrid is not None else self._hybrid_side(side)
            lhs = self._hybrid_rows(u, P, h, h.R.dtype)                                    # (b, 2D + 2)
            return torch.mm(lhs, h.R.T, out=out) if out is not None else lhs @ h.R.T
        parts = {}
        if c.uses_cf:
            parts["cf"] = u @ side.V.T
            if side.b is not None:
                parts["cf"] = parts["cf"] + side.b
        if c.uses_content:
            parts["content"] = P @ side.C.T
        return self._combine(parts)

    # --- training: one batch's losses, reading only the rows the batch needs ---------------

    def sparse_tables(self) -> list[nn.Parameter]:
        """The large embedding tables, to which batch_loss(sparse=True) gives row-sparse
        gradients (the batch's rows only, for SparseAdam): user_emb, item_emb, item_bias and a
        learned token_emb (a pretrained token table and its projection stay dense)."""
        c, out = self.config, []
        if c.uses_cf:
            out += [self.user_emb.weight, self.item_emb.weight]
            if self.item_bias is not None:
                out.append(self.item_bias)
        if c.uses_content and c.token_pre_dim == 0:
            out.append(self.token_emb.weight)
        return out

    def content_rows(self, items: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """C[items]: (M, D) content vectors of (M,) items only, equal to item_content()[items]
        without the pass over the whole catalog."""
        pos, _ = gather_rows(self.tok_indptr, items)
        lengths = self.tok_indptr[items + 1] - self.tok_indptr[items]                    # (M,)
        offsets = torch.cumsum(lengths, 0) - lengths
        tokens = self.tok_indices[pos]
        if sparse and self.config.token_pre_dim == 0:
            # the distinct tokens read once: the sparse gradient then has one entry per row,
            # not one per occurrence (which SparseAdam would have to sort and sum)
            rows, tokens = _compact(tokens, self.config.n_tokens)
            E = F.embedding(rows, self.token_emb.weight, sparse=True)                   # (T', D)
        else:
            E = self.token_table()                                                       # (T, D)
        return bag_sum(E, tokens, self.tok_weights[pos], offsets)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, loss_fn,
                   l2: float = 0.0, sparse: bool = False, max_history: int = 0) -> dict[str, torch.Tensor]:
        """The training losses of one batch: (B,) users and their (B,) positive items against
        (N,) negatives shared by the whole batch (one (B, N) matmul per component; a negative
        that is the row's own positive is masked out of that row). loss_fn(pos (B,), neg (B, N),
        mask (B, N)) is one of train/losses.py. Returns one loss per component ("cf",
        "content"), plus "alpha" (learn_alpha: the loss on the blend that trains alpha alone)
        and "l2" (l2 > 0: l2 * (|U[u]|^2 + |V[pos]|^2) summed over the batch / B); the
        training loss is their sum.

        Only the rows the batch needs are read: U[users], V and b of pos and neg, and C of the
        union of pos, neg and the training histories of the batch's distinct users (for their
        content profiles), each pooled from its own tokens. The losses and gradients are those
        of scoring against the whole catalog's item_side(), without its (I, D) content pass.
        sparse=True: the sparse_tables() get row-sparse gradients (their other rows none).

        max_history > 0 (an approximation, off by default): the training profile of a user with
        a longer history pools max_history of its items drawn uniformly with replacement (an
        unbiased estimate of the mean; batches are drawn per interaction, so heavy users are in
        almost every batch, and at 1M users their histories made up ~190,000 of the items a
        batch pooled). The profile used at ranking time always pools the whole history."""
        c = self.config
        uniq, inv = torch.unique(users, return_inverse=True)                          # (b,), (B,)
        # the negatives' scores depend on the user only: with batches of whole histories
        # (batching="users", b << B) one (b, N) product serves every row of a user, and the
        # softmax loss sums each user's exp(negatives) once (no (B, N) block at all)
        per_user = 2 * len(uniq) <= len(users)
        per_user_loss = getattr(loss_fn, "per_user", None)      # train/losses.py: softmax has one
        lse_path = per_user and per_user_loss is not None and not (c.variant == "hybrid" and c.learn_alpha)
        clash = None if lse_path else pos[:, None] == neg[None, :]                    # (B, N)
        pos_s, neg_u = {}, {}      # neg_u: negative scores, a row per user (b, N) if per_user, else per row (B, N)
        if c.uses_cf:
            uu = F.embedding(uniq if per_user else users, self.user_emb.weight, sparse=sparse)   # (b or B, D)
            u = uu[inv] if per_user else uu                                             # (B, D)
            Vp = F.embedding(pos, self.item_emb.weight, sparse=sparse)                 # (B, D)
            Vn = F.embedding(neg, self.item_emb.weight, sparse=sparse)                 # (N, D)
            pos_s["cf"] = (u * Vp).sum(1, keepdim=True)                                 # (B, 1)
            neg_u["cf"] = uu @ Vn.T
            if self.item_bias is not None:
                pos_s["cf"] = pos_s["cf"] + _rows(self.item_bias, pos, sparse)[:, None]
                neg_u["cf"] = neg_u["cf"] + _rows(self.item_bias, neg, sparse)
        if c.uses_content:
            Pu, Cp, Cn = self._batch_content(uniq, pos, neg, sparse, max_history)
            P = Pu[inv]                                                                 # (B, D)
            pos_s["content"] = (P * Cp).sum(1, keepdim=True)                            # (B, 1)
            neg_u["content"] = (Pu if per_user else P) @ Cn.T
        if lse_path:       # softmax over whole histories: each user's negatives summed once
            sn = torch.sort(neg).values
            hits = torch.searchsorted(sn, pos, right=True) - torch.searchsorted(sn, pos)   # (B,) clashes
            losses = {name: per_user_loss(pos_s[name][:, 0], neg_u[name], inv, hits)
                      for name in pos_s}
        else:
            neg_s = {name: v[inv] if per_user else v for name, v in neg_u.items()}     # (B, N)
            losses = {name: loss_fn(pos_s[name][:, 0], neg_s[name], clash) for name in pos_s}
        if c.variant == "hybrid" and c.learn_alpha:
            losses["alpha"] = self._alpha_loss(pos_s, neg_s, clash, loss_fn)
        if l2 > 0 and c.uses_cf:
            losses["l2"] = l2 * (u.pow(2).sum() + Vp.pow(2).sum()) / len(users)
        return losses

    def _batch_content(self, uniq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, sparse: bool,
                       max_history: int = 0):
        """(P (b, D) of the (b,) distinct users `uniq`, C[pos] (B, D), C[neg] (N, D)), with C
        computed once for the union of the items these need (pos, neg, the histories of the
        distinct users; each user pooled once: training batches repeat heavy users many times)."""
        if max_history > 0:
            hpos, lengths = self._sample_history(uniq, max_history)
        else:
            hpos, _ = gather_rows(self.hist_indptr, uniq)
            lengths = self.hist_indptr[uniq + 1] - self.hist_indptr[uniq]              # (b,)
        B, N = len(pos), len(neg)
        items, slot = _compact(torch.cat([pos, neg, self.hist_indices[hpos]]), self.config.n_items)
        C = self.content_rows(items, sparse)                                          # (M, D)
        offsets = torch.cumsum(lengths, 0) - lengths
        w = torch.repeat_interleave(1.0 / lengths.clamp(min=1).to(C.dtype), lengths)  # mean: 1 / |H(u)|
        P = bag_sum(C, slot[B + N:], w, offsets)                                      # (b, D), 0 if empty
        return P, F.embedding(slot[:B], C), F.embedding(slot[B:B + N], C)

    def _sample_history(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in hist_indices, per-user counts (b,)) of the history items pooled for
        the (b,) users: all of a history of at most k items, else k drawn uniformly with
        replacement (torch's generator, on the users' device)."""
        start = self.hist_indptr[users]
        lengths = self.hist_indptr[users + 1] - start                                  # (b,)
        take = lengths.clamp(max=k)
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), take)   # (n,)
        j = torch.arange(len(row), device=users.device) - (torch.cumsum(take, 0) - take)[row]
        long = lengths[row] > k
        if bool(long.any()):
            drawn = (torch.rand(len(row), device=users.device) * lengths[row]).long()
            j = torch.where(long, torch.minimum(drawn, lengths[row] - 1), j)
        return start[row] + j, take

    def _alpha_loss(self, pos_s, neg_s, clash, loss_fn) -> torch.Tensor:
        """Loss on the blended score that trains alpha alone: components detached, per-user
        mean/std estimated on the batch's shared negatives, a uniform sample of the catalog
        (the exact full-catalog statistics used at ranking time would cost a (B, I) matmul)."""
        a = self.alpha
        z = {}
        for n in pos_s:
            std, mean = torch.std_mean(neg_s[n].detach(), dim=1, keepdim=True, correction=0)
            z[n] = (standardise(pos_s[n].detach(), mean, std), standardise(neg_s[n].detach(), mean, std))
        blend_pos = a * z["cf"][0] + (1 - a) * z["content"][0]
        blend_neg = a * z["cf"][1] + (1 - a) * z["content"][1]
        return loss_fn(blend_pos[:, 0], blend_neg, clash)

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if "cf" in parts:
            parts["cf"] = self.neutralise_cold(parts["cf"])
        if self.config.variant == "collaborative":
            return parts["cf"]
        if self.config.variant == "content":
            return parts["content"]
        a = self.alpha
        return a * self.standardise(parts["cf"]) + (1 - a) * self.standardise(parts["content"])



def _compact(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(items (M,), the distinct values of idx (in [0, n)) in order; slot (len(idx),) with
    idx == items[slot]), by marking an (n,) table: no sort."""
    mark = torch.zeros(n, dtype=torch.bool, device=idx.device)
    mark[idx] = True
    items = mark.nonzero().squeeze(1)
    where = torch.empty(n, dtype=torch.long, device=idx.device)
    where[items] = torch.arange(len(items), device=idx.device)
    return items, where[idx]


class _BagSum(torch.autograd.Function):
    """out[b] = sum_{k in bag b} w[k] X[idx[k]]: F.embedding_bag(mode="sum", per_sample_weights)
    whose backward gathers instead of scattering: with the entries sorted by their row of X,
    each row's gradient is itself a bag sum over rows of the output gradient. (embedding_bag's
    own backward adds one entry at a time and cost ~15x its forward here: 120 ms for the
    340,000 token entries of a batch at 100,000 items; this one ~30 ms, of which the sort is a third.)"""

    @staticmethod
    def forward(ctx, X, idx, w, offsets):
        ctx.save_for_backward(idx, w, offsets)
        ctx.n_rows = X.shape[0]
        return F.embedding_bag(idx, X, offsets, mode="sum", per_sample_weights=w)         # (n_bags, D)

    @staticmethod
    def backward(ctx, g):
        idx, w, offsets = ctx.saved_tensors
        lengths = torch.diff(offsets, append=offsets.new_tensor([len(idx)]))
        bag = torch.repeat_interleave(torch.arange(len(offsets), device=idx.device), lengths)   # (nnz,)
        order = torch.argsort(idx, stable=True)          # stable: a fixed order of summation
        counts = torch.bincount(idx, minlength=ctx.n_rows)
        gX = F.embedding_bag(bag[order], g.contiguous(), torch.cumsum(counts, 0) - counts, mode="sum",
                             per_sample_weights=w[order])                                  # (n_rows, D)
        return gX, None, None, None


def bag_sum(X: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(n_bags, D): bag b sums w[k] X[idx[k]] over k in offsets[b]:offsets[b+1] (an empty bag
    gives 0); differentiable in X (see _BagSum)."""
    return _BagSum.apply(X, idx, w, offsets)


class _SparseRows(torch.autograd.Function):
    """weight[idx] whose gradient is a sparse COO tensor holding only the rows of idx (for a
    1-D table such as item_bias, which F.embedding(sparse=True) cannot take)."""

    @staticmethod
    def forward(ctx, weight, idx):
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        return weight[idx]

    @staticmethod
    def backward(ctx, grad):
        idx, = ctx.saved_tensors
        return torch.sparse_coo_tensor(idx[None], grad, ctx.shape, check_invariants=False), None


def _rows(weight: torch.Tensor, idx: torch.Tensor, sparse: bool) -> torch.Tensor:
    return _SparseRows.apply(weight, idx) if sparse else weight[idx]


def _dot(u: torch.Tensor, table: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """u (B, D) against rows of table (I, D): all rows, shared rows (N,) or per-user rows (B, N)."""
    if items is None:
        return u @ table.T                                   # (B, I)
    if items.dim() == 1:
        return u @ table[items].T                            # (B, N)
    return torch.einsum("bd,bnd->bn", u, table[items])       # (B, N)
