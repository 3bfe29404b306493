"""The one model interface: what every recsys model is to ranking, evaluation, export and the
`Recommender`.

A model is a plain `torch.nn.Module` whose state is all in its state_dict (parameters and
buffers: CSR arrays, tables), plus a small JSON-able `config` dataclass (with `kind`,
`n_users`, `n_items`). It answers four questions:

    side = model.item_side()                 everything item-side, computed once per ranking
                                             pass: a frozen dataclass of the model's own type
    s = model.score(who, side, out, ws)      (b, I) scores of
                                               who = (b,) long tensor: known users, or
                                               who = (b, I) sparse CSR tensor: histories of
                                                     users outside the model (no retraining)
    grown = model.grow(bags)                 the model with new items appended (TokenBags of
                                             the new items); the given model is unchanged
    model.state_dict(), model.config         its export (models/registry.py rebuilds it)

`out` (a (b, I) block) lets a model write its scores in place with no autograd (the ranking
path reuses one block per worker); `ws` is a per-worker scratch (sparse/spgemm.Workspace).
A model may ignore both (`writes_out = True` says it uses `out`). Models whose scoring is partly single-threaded set
`parallel_chunks = True`, and ranking then scores chunks on several CPU threads.

Worked example (shapes): a model of 3 users and 5 items;
    side = m.item_side();  m.score(torch.tensor([0, 2]), side)  -> (2, 5)
    H = torch.sparse_csr_tensor(torch.tensor([0, 2]), torch.tensor([1, 4]), torch.ones(2), (1, 5))
    m.score(H, side)  -> (1, 5): a user who interacted with items 1 and 4
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from recsys.models import similar



def is_histories(who: torch.Tensor) -> bool:
    """True when `who` is a (b, I) sparse CSR block of histories, False for (b,) user indices."""
    return who.layout == torch.sparse_csr


class Model(nn.Module):
    """Base of every recsys model (see the module docstring)."""

    kind: ClassVar[str]                     # what an export's config.json names (registry.py)
    parallel_chunks: ClassVar[bool] = False
    writes_out: ClassVar[bool] = False      # score() can write into a given `out` block
    reads_order: ClassVar[bool] = False     # a given history's CSR row lists its items oldest
                                            # first, and the model reads that order (sequence)
    folds_in: ClassVar[bool] = False        # users outside it get a ridge fold-in (fold_in_lambda)
    config: Any

    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    @property
    def n_items(self) -> int:
        return int(self.config.n_items)

    def keeps(self, *names: str) -> bool:
        """The model holds all these data buffers ("hist_indptr": training histories,
        "tok_indptr": item token bags, "fill_indptr": a cold fill, ...)."""
        return all(n in self._buffers for n in names)

    def item_side(self) -> Any:
        raise NotImplementedError

    def score(self, who: torch.Tensor, side: Any, out: torch.Tensor | None = None, ws=None) -> torch.Tensor:
        """(b, I) scores of known users ((b,) indices) or of given histories ((b, I) sparse CSR)."""
        if is_histories(who):
            return self.score_histories(who, side, out, ws)
        return self.score_users(who, side, out, ws)

    def score_columns(self, who: torch.Tensor, side: Any, cols: torch.Tensor | None = None, out=None,
                      ws=None) -> torch.Tensor:
        """(b, C) scores of the (C,) item columns `cols` only (None: all, as score()). Models
        override it to score just those columns (candidate ranking costs time in proportion to
        the candidates); the default scores the whole catalog and keeps the columns."""
        if cols is None:
            return self.score(who, side, out, ws)
        return self.score(who, side, None, ws)[:, cols]

    def score_users(self, users: torch.Tensor, side: Any, out=None, ws=None) -> torch.Tensor:
        raise NotImplementedError

    def score_histories(self, H: torch.Tensor, side: Any, out=None, ws=None) -> torch.Tensor:
        raise NotImplementedError

    # --- similar items and users (models/similar.py) ---------------------------------------

    def own_spaces(self, of: str) -> tuple[str, ...]:
        """The similarity spaces of the model's own ("items" or "users"), besides history/tokens."""
        return ()

    def default_space(self, of: str) -> str:
        return "history"

    def similarity_side(self, of: str, space: str | None = None):
        """The side object whose score(who, cols) gives the (b, C) similarities of query items
        (of="items") or users (of="users") in `space` (None: the model's default)."""
        space = space or self.default_space(of)
        similar.check_space(space, self.own_spaces(of), of, self.kind)
        if space == "history":
            return similar.history_side(self, of)
        if space == "tokens":
            return similar.token_side(self)
        return self.own_similarity(of, space)

    def own_similarity(self, of: str, space: str):
        raise NotImplementedError

    def projector_tables(self) -> dict[str, torch.Tensor]:
        """Item tables (I, d) worth showing in TensorBoard's Projector, by name (none: {})."""
        return {}

    def grow(self, bags) -> "Model":
        raise NotImplementedError(f"{type(self).__name__} cannot grow its catalog")

    def baked(self) -> "Model":
        """The form an export stores (the learned model folds a pretrained token table)."""
        return self

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "Model":
        """Rebuild from an export's config (JSON dict) and state_dict tensors; `rebuild`
        (registry.model_from_state) rebuilds the parts of a composite model."""
        raise NotImplementedError

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, I) scores. For many chunks, call item_side() once and
        score() per chunk instead."""
        return self.score(users, self.item_side())
