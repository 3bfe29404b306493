"""What the memory-based and closed-form models share: the config, the user histories (CSR
buffers), the fitting inputs, the cold fill applied to each score block, the export state and
growing the catalog. The models themselves: knn.py (ItemKNN, ContentKNN, UserKNN), ease.py,
popularity.py. All state is plain tensors (CSR arrays), so exports stay safetensors-only.

(x = 1 with values=binary, the rating with values=rating, in every formula of those files.)
`normalize=True` divides a KNN score by the sum of the similarities that contributed to it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch

from recsys.models import coldstart
from recsys.models.base import Model
from recsys.models.extend import cat_bags, fill_rows
from recsys.sparse.similarity import select_rows, sparse_rows
from recsys.sparse.spgemm import DENSE_RATIO


@dataclass
class MemoryConfig:
    kind: str
    n_users: int
    n_items: int
    similarity: str = "cosine"
    k: int = 100
    shrink: float = 0.0
    values: str = "binary"        # binary | rating: the matrix the similarity is computed on
    normalize: bool = False
    block_size: int = 256
    max_products: int = 2_000_000   # scalar products materialised at once: bounds the kernel's memory
    dense_ratio: float = DENSE_RATIO  # heavy-column threshold of the sparse kernel (spgemm.py)
    direction: str = "candidate"  # itemknn / content_knn: candidate | history (see knn.py)
    lam: float = 200.0            # EASE L2 weight
    side: float = 0.0             # EASE: weight beta of the items' token vectors stacked under X (ease.py)
    max_items: int = 20000        # EASE refuses larger catalogs (memory 3 x 4 x I^2 bytes)
    rank: int = 512               # ease_lowrank: eigenpairs of the Gram matrix kept (ease_lowrank.py)
    power_iters: int = 3          # ease_lowrank: subspace iterations of the randomized eigensolver
    n_tokens: int = 0             # size of the token vocabulary of the stored item bags
    cold_k: int = 0               # itemknn/userknn/ease: cold items borrow the scores of this many
    cold_scale: float = 1.0       # content neighbours, times cold_scale (coldstart.py)

    def __post_init__(self):
        """Values a fit cannot use are refused here, one line naming the field."""
        def bad(name, rule):
            raise ValueError(f"model.{name}={getattr(self, name)!r} must be {rule}")
        for name in ("k", "block_size", "max_products", "max_items", "rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 1:
                bad(name, "a number >= 1")
        for name in ("shrink", "side", "cold_k", "n_tokens", "power_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                bad(name, "a finite number >= 0")
        for name in ("lam", "dense_ratio", "cold_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
                bad(name, "a finite number > 0")
        if self.values not in ("binary", "rating"):
            bad("values", "'binary' or 'rating'")
        if self.direction not in ("candidate", "history"):
            bad("direction", "'candidate' or 'history'")

    @property
    def variant(self) -> str:
        return self.kind

    def to_json(self) -> dict:
        return asdict(self)


HIST = ("hist_indptr", "hist_indices", "hist_values")
TOKENS = ("tok_indptr", "tok_indices", "tok_weights")
FILL = ("fill_indptr", "fill_indices", "fill_weights")


class MemoryModel(Model):
    """Holds the user histories (CSR) plus the fitted tables of one kind (`tables`, the names
    of its own tensors); the items' token bags when given (what items added later are compared
    with); and the cold items' fill matrix (coldstart.py) when the kind can borrow scores."""

    parallel_chunks = True     # ranking may score chunks on several threads (per-thread ws)
    tables: ClassVar[tuple[str, ...]] = ()
    fields: ClassVar[tuple[str, ...]] = ()  # the MemoryConfig fields this kind reads (its parameters;
    # configs/model/<kind>.yaml sets exactly these: tests/test_estimators.py)
    fills_cold: ClassVar[bool] = False      # a collaborative kind: cold items can borrow scores

    def __init__(self, config: MemoryConfig, buffers: dict[str, torch.Tensor], owned: tuple[str, ...] = ()):
        """buffers are copied, except those named in `owned` (tensors nobody else holds: the
        tables a fit has just made; copying EASE's 10,000 x 10,000 B costs 0.1 s)."""
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} holds kind {self.kind!r}, not {config.kind!r}")
        self.config = config
        for name, t in buffers.items():
            self.register_buffer(name, t if name in owned else torch.as_tensor(t).clone())

    # --- fitting ----------------------------------------------------------------------------

    @classmethod
    def fit(cls, config: MemoryConfig, hist_indptr, hist_indices, hist_values=None,
            tok_indptr=None, tok_indices=None, tok_weights=None, n_tokens: int = 0,
            device: str | torch.device = "cpu", fill: tuple | None = None) -> "MemoryModel":
        """hist_*: each user's training items (CSR, values = ratings or None); tok_*: the
        items' TF-IDF token bags; fill: the cold items' fill matrix (coldstart.fill_matrix),
        used by the collaborative kinds when config.cold_k > 0."""
        c = config
        dev = torch.device(device)
        if c.direction not in ("candidate", "history"):
            raise ValueError(f"model.direction={c.direction!r} must be 'candidate' or 'history'")
        if c.values not in ("binary", "rating"):
            raise ValueError(f"model.values={c.values!r} must be 'binary' or 'rating'")
        hist_indptr, hist_indices = hist_indptr.to(dev), hist_indices.to(dev)
        vals = hist_values.to(dev).float() if (hist_values is not None and c.values == "rating") else None
        buffers = {"hist_indptr": hist_indptr, "hist_indices": hist_indices,
                   "hist_values": vals if vals is not None else torch.ones(len(hist_indices), device=dev)}
        if tok_indptr is not None:
            buffers.update(tok_indptr=tok_indptr.to(dev), tok_indices=tok_indices.to(dev),
                           tok_weights=tok_weights.to(dev).float())
            if c.n_tokens == 0:
                c.n_tokens = int(n_tokens)
        X = sparse_rows(hist_indptr, hist_indices, buffers["hist_values"], c.n_items)     # (U, I)
        tables = cls._fit_tables(c, X, buffers)
        m = cls(c, {**buffers, **tables}, owned=tuple(tables))
        if fill is not None and c.cold_k > 0 and cls.fills_cold:
            m.set_fill(*(t.to(dev) for t in fill))
        return m

    @classmethod
    def _fit_tables(cls, c: MemoryConfig, X: torch.Tensor, buffers: dict) -> dict[str, torch.Tensor]:
        """The kind's own tensors, from the (U, I) history matrix X (and buffers' token bags)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "MemoryModel":
        cfg = MemoryConfig(**config)
        missing = [n for n in cls.tables + HIST if n not in state]
        if missing:
            raise KeyError(f"missing tensors {missing}")
        m = cls(cfg, {n: state[n] for n in cls.tables + HIST + TOKENS if n in state})
        if "fill_indptr" in state:
            m.set_fill(*(state[n] for n in FILL))
        return m

    @classmethod
    def declare_tensors(cls, c: MemoryConfig, spec, p: str = "") -> None:
        """What an export of this kind holds, for the loader to check before reading a tensor
        (serve/export.py): spec.add_csr(name, rows, cols, values name or None, optional=...)
        and spec.add(name, dtype, *shape); p prefixes a blend part's names."""
        U, I, T = c.n_users, c.n_items, c.n_tokens
        spec.add_csr(p + "hist", U, I, p + "hist_values")
        cls._declare_tables(c, spec, p)
        spec.add_csr(p + "tok", I, T, p + "tok_weights", optional=True)
        spec.add_csr(p + "fill", I, I, p + "fill_weights", optional=True)

    @classmethod
    def _declare_tables(cls, c: MemoryConfig, spec, p: str) -> None:
        raise NotImplementedError

    def set_fill(self, fill_indptr: torch.Tensor, fill_indices: torch.Tensor, fill_weights: torch.Tensor) -> None:
        """The cold items' fill matrix (coldstart.py), applied to every score block."""
        for name, t in zip(FILL, (fill_indptr, fill_indices, fill_weights)):
            self.register_buffer(name, t.clone())

    # --- scoring ----------------------------------------------------------------------------

    def _hist(self) -> torch.Tensor:
        c = self.config
        return torch.sparse_csr_tensor(self.hist_indptr, self.hist_indices, self.hist_values, (c.n_users, c.n_items))

    @property
    def has_fill(self) -> bool:
        """Cold items borrow scores (set_fill was called: cold_k > 0 and a collaborative kind)."""
        return self.keeps("fill_indptr")

    def _fill(self, s: torch.Tensor) -> torch.Tensor:
        if not self.has_fill:
            return s
        return coldstart.fill_scores(s, self.fill_indptr, self.fill_indices, self.fill_weights)

    def item_side(self):
        return None

    def score_users(self, users: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        """(b,) users -> (b, I): their training histories, scored as given histories."""
        return self.score_histories(select_rows(self._hist(), users), side, out, ws)

    # --- growing the catalog ----------------------------------------------------------------

    def grow(self, bags) -> "MemoryModel":
        """The model with bags.n_items new items (extend.py): token bags appended, the kind's
        tables grown (_grow_tables), fill rows for the new items when the kind borrows."""
        c, m = self.config, bags.n_items
        n_old = c.n_items
        st = {k: v.detach().clone() for k, v in self.state_dict().items()}
        if "tok_indptr" not in st:
            raise ValueError("this export keeps no item token bags (made by an older recsys): refit it to add items")
        st["tok_indptr"], st["tok_indices"], st["tok_weights"] = cat_bags(*(st[n] for n in TOKENS), bags)
        self._grow_tables(st, m)
        out = type(self)(replace(c, n_items=n_old + m), {k: v for k, v in st.items() if not k.startswith("fill_")})
        if "fill_indptr" in st or (c.cold_k > 0 and self.fills_cold):
            dev = st["hist_indptr"].device
            warm = torch.bincount(st["hist_indices"], minlength=n_old) > 0
            old = (tuple(st[n] for n in FILL) if "fill_indptr" in st else
                   (torch.zeros(n_old + 1, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev),
                    torch.zeros(0, device=dev)))
            out.set_fill(*fill_rows(st, old, n_old, m, c.n_tokens, warm, c.cold_k, c.cold_scale))
        return out.train(self.training)

    def _grow_tables(self, st: dict[str, torch.Tensor], m: int) -> None:
        """In place in the state st: the kind's tables for m more items (token bags already grown)."""


def csr_buffers(W: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}_indptr": W.crow_indices().long(), f"{prefix}_indices": W.col_indices().long(),
            f"{prefix}_values": W.values().float()}


def out_block(out: torch.Tensor | None, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """`out` when it is a contiguous (rows, cols) block, else a new one."""
    if out is None or out.shape != (rows, cols) or not out.is_contiguous():
        return torch.empty(rows, cols, dtype=like.dtype, device=like.device)
    return out
