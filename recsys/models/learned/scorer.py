"""The base of the learned scorer's variants (collaborative.py, content.py, hybrid.py): the
data buffers, construction by variant, export and growth, and the scoring skeleton that each
part fills through small hooks. A hook of one part adds its own and calls super(), so the
hybrid (both parts) runs the collaborative's then the content's, in that order.

    Scorer(config, buffers)      the variant's class (VARIANT_CLASSES[config.variant])
    hooks of a part              _make_tables, _declare_own, _grow_state, _side_parts,
                                 _components, _history_parts, _spaces, _projector, _sparse,
                                 batch_scores (train/learned_loss.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from recsys.models.base import Model, is_histories
from recsys.models.extend import cat_bags, fill_rows
from recsys.models.learned.config import BUFFERS, FILL, LearnedItems, ScorerConfig, empty_fill
from recsys.models.similar import DenseCosine

VARIANT_CLASSES: dict[str, type["Scorer"]] = {}     # filled by the parts' modules (registered below)


@dataclass
class Batch:
    """One training batch as the parts score it (train/learned_loss.py): (B,) users, their
    (B,) positives, (N,) shared negatives; uniq (b,) distinct users and inv (B,) with
    users == uniq[inv]; per_user: negatives scored once per distinct user. Each part adds
    pos[name] (B, 1), neg[name] ((b or B), N) and, optionally, reg[name] (a scalar sum of squares)."""
    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor
    uniq: torch.Tensor
    inv: torch.Tensor
    per_user: bool
    sparse: bool = False
    max_history: int = 0
    pos: dict = field(default_factory=dict)
    neg: dict = field(default_factory=dict)
    reg: dict = field(default_factory=dict)


class Scorer(Model):
    kind = "learned"
    writes_out = True
    variant: ClassVar[str]
    fills_cold: ClassVar[bool] = False      # cold items borrow collaborative rows (cold_k)
    pools_tokens: ClassVar[bool] = False    # items are pooled content tokens (a token table)
    item_tokens: ClassVar[bool] = False     # the collaborative item vectors include them (mf_tokens)
    learns_alpha = False                     # the hybrid with learn_alpha: alpha is a parameter

    def __new__(cls, *args, **kwargs):
        if cls is Scorer:                   # Scorer(config, buffers) builds the config's variant
            config = args[0] if args else kwargs["config"]
            cls = VARIANT_CLASSES[config.variant]
        return super().__new__(cls)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "variant" in cls.__dict__:
            VARIANT_CLASSES[cls.variant] = cls

    def __init__(self, config: ScorerConfig, buffers: dict[str, torch.Tensor]):
        """buffers: tok_indptr (I+1,), tok_indices (T_nnz,), tok_weights (T_nnz,) float: the
        TF-IDF bags; hist_indptr (U+1,), hist_indices (H,): each user's training items (for the
        content profile); item_warm (I,) bool: item has a training interaction."""
        super().__init__()
        if config.variant != self.variant:
            raise ValueError(f"model.variant={config.variant!r} given to the {self.variant} scorer")
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
        self._make_tables(c, buffers)

    # --- hooks (each part adds its own, then calls super()) ------------------------------------

    def _make_tables(self, c: ScorerConfig, buffers: dict) -> None:
        pass

    @classmethod
    def _declare_own(cls, c: ScorerConfig, spec, p: str) -> None:
        pass

    def _grow_state(self, state: dict, buffers: dict, m: int) -> None:
        pass

    def _side_parts(self) -> dict:
        return {}

    def _components(self, users, side: LearnedItems, items, profile, out: dict) -> None:
        pass

    def _history_parts(self, H: torch.Tensor, side: LearnedItems, out: dict) -> None:
        pass

    def _spaces(self) -> tuple[str, ...]:
        return ()

    def _projector(self, tables: dict) -> None:
        pass

    def _sparse(self, out: list) -> None:
        pass

    def batch_scores(self, batch: Batch) -> None:
        """Add this part's scores of one training batch (see Batch)."""

    @property
    def alpha(self) -> torch.Tensor:
        """The share of the collaborative part (1 collaborative, 0 content, the hybrid's alpha)."""
        raise NotImplementedError

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's score from its raw component scores (training and autograd paths)."""
        raise NotImplementedError

    def _score_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor, ws) -> torch.Tensor:
        raise NotImplementedError

    def _columns(self, users: torch.Tensor, side: LearnedItems, cols: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- construction, export, growth ----------------------------------------------------------

    @classmethod
    def declare_tensors(cls, c: ScorerConfig, spec, p: str = "") -> None:
        """What an export of a Scorer holds (see MemoryModel.declare_tensors): the baked form,
        token table projected (token_pre_dim 0)."""
        U, I, T = c.n_users, c.n_items, c.n_tokens
        spec.add_csr(p + "tok", I, T, p + "tok_weights")
        spec.add_csr(p + "hist", U, I, None)
        spec.add_csr(p + "fill", I, I, p + "fill_weights")
        spec.add(p + "item_warm", "BOOL", I)
        VARIANT_CLASSES[c.variant]._declare_own(c, spec, p)

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "Scorer":
        scorer = Scorer(ScorerConfig(**config), {k: state[k] for k in BUFFERS + FILL if k in state})
        scorer.load_state_dict(state, strict=True)
        return scorer

    def baked(self) -> "Scorer":
        """The same scorer with a pretrained token table replaced by its projection E (a plain
        learned table): what the export stores, smaller and with identical scores."""
        if self.config.token_pre_dim == 0:
            return self
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("token_pre", "token_proj"))}
        with torch.no_grad():
            state["token_emb.weight"] = self.token_table().detach().clone()
        out = Scorer(replace(self.config, token_pre_dim=0, token_pre_train=False),
                     {k: state[k] for k in BUFFERS + FILL})
        out.load_state_dict(state, strict=True)
        return out.to(self.tok_indices.device).train(self.training)

    def grow(self, bags) -> "Scorer":
        """The scorer with bags.n_items new items (extend.py): C[new] pooled from the token
        table; the collaborative part gives them the neutral score, or with cold_k > 0 borrows
        V, b from their content neighbours among the warm items (coldstart.py)."""
        c, m = self.config, bags.n_items
        n_old = c.n_items
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        tok = cat_bags(state["tok_indptr"], state["tok_indices"], state["tok_weights"], bags)
        state["tok_indptr"], state["tok_indices"], state["tok_weights"] = tok
        warm = state["item_warm"]
        state["item_warm"] = torch.cat([warm, torch.zeros(m, dtype=torch.bool, device=warm.device)])
        fill = fill_rows(state, (state["fill_indptr"], state["fill_indices"], state["fill_weights"]), n_old, m,
                         c.n_tokens, warm, c.cold_k if self.fills_cold else 0, c.cold_scale)
        state["fill_indptr"], state["fill_indices"], state["fill_weights"] = fill
        buffers = {k: state[k] for k in BUFFERS + FILL}
        self._grow_state(state, buffers, m)
        out = Scorer(replace(c, n_items=n_old + m), buffers)
        out.load_state_dict(state, strict=True)
        return out.to(self.tok_indices.device).train(self.training)

    def _hist(self) -> torch.Tensor:
        """(U, I) sparse CSR of the training histories (ones)."""
        c = self.config
        return torch.sparse_csr_tensor(self.hist_indptr, self.hist_indices,
                                       torch.ones(len(self.hist_indices), device=self.hist_indices.device),
                                       (c.n_users, c.n_items))

    # --- scores ----------------------------------------------------------------------------

    def item_side(self) -> LearnedItems:
        """Everything item-side the user scores need; reuse it across user chunks."""
        return LearnedItems(**self._side_parts())

    def component_scores(self, users: torch.Tensor, side: LearnedItems, items: torch.Tensor | None = None,
                         profile: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw scores per component ("cf", "content"), for (B,) users against
        items None: the whole catalog -> (B, I); items (N,): the same N items for every user
        -> (B, N), one matmul; items (B, N): each user's own N items -> (B, N).
        profile: the users' content profile P (B, D) when the caller has it."""
        out: dict[str, torch.Tensor] = {}
        self._components(users, side, items, profile, out)
        return out

    def score_users(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor | None = None,
                    ws=None) -> torch.Tensor:
        """(B,) user indices -> (B, I) scores against the whole catalog. With `out` (and no
        autograd), written into it with in-place steps and one reused scratch block instead of
        the half-dozen (B, I) temporaries of the plain expression (on a CPU each fresh one costs
        page faults worth more than the matmul); the values are bitwise the same."""
        if out is None or torch.is_grad_enabled():
            return self._combine(self.component_scores(users, side))
        return self._score_into(users, side, out, ws)

    def score_histories(self, H: torch.Tensor, side: LearnedItems, out=None, ws=None) -> torch.Tensor:
        """(b, I) sparse CSR histories of users who need not be in the vocabulary -> (b, I)
        scores, without retraining: the content profile is the mean content vector of the
        history's items (exactly as for a known user); the collaborative vector is folded in
        (fold_in, ridge weight config.fold_in_lambda) against the trained item vectors."""
        parts: dict[str, torch.Tensor] = {}
        self._history_parts(H, side, parts)
        return self._combine(parts)

    def score_columns(self, who: torch.Tensor, side: LearnedItems, cols: torch.Tensor | None = None,
                      out=None, ws=None) -> torch.Tensor:
        """(b, C) scores of the candidate columns only, b x C x D work (cold rows are prepared
        on the item side in eval mode, so these are the full ranking's scores)."""
        if cols is None or is_histories(who) or self.training or torch.is_grad_enabled():
            return super().score_columns(who, side, cols, out, ws)
        return self._columns(who, side, cols)

    # --- similar items and users (models/similar.py), the projector, sparse updates -------------

    def own_spaces(self, of: str) -> tuple[str, ...]:
        return self._spaces()

    def default_space(self, of: str) -> str:
        return self.variant

    @torch.no_grad()
    def own_similarity(self, of: str, space: str):
        """Cosine of item vectors V / content vectors C (users: U / profiles P); hybrid: alpha-weighted."""
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

    @torch.no_grad()
    def projector_tables(self) -> dict[str, torch.Tensor]:
        tables: dict[str, torch.Tensor] = {}
        self._projector(tables)
        return tables

    def sparse_tables(self) -> list:
        """The large embedding tables, to which training with sparse=True gives row-sparse
        gradients (the batch's rows only, for SparseAdam): user_emb, item_emb, item_bias and a
        learned token_emb (a pretrained token table and its projection stay dense)."""
        out: list = []
        self._sparse(out)
        return out
