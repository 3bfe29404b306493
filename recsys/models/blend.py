"""The alpha blend of any two models:

    s[u, i] = alpha * n_u(first)[i] + (1 - alpha) * n_u(second)[i]

n_u a per-user normalisation over the catalog, typically of a collaborative model and a content
model:

    zscore  (s - mean_u) / std_u, as in the learned hybrid (learned/hybrid.py): right for dense scores;
    max     s / max_u |s|: right for sparse scores such as KNN votes, where most items score 0
            and the z-score of the few voted items is huge (it would swamp the other part).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from recsys.models import similar
from recsys.models.base import Model
from recsys.models.normalise import max_abs, standardise

BLEND_NORMS = ("zscore", "max")


@dataclass
class BlendConfig:
    n_users: int
    n_items: int
    alpha: float
    first: dict
    second: dict
    kind: str = "blend"
    norm: str = "zscore"          # per-user normalisation of each part: zscore | max

    @property
    def variant(self) -> str:
        name = lambda part: part.get("kind") or part.get("variant")        # learned parts: their variant
        return f"blend({name(self.first)},{name(self.second)})"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BlendSide:
    first: Any
    second: Any


class Blend(Model):
    kind = "blend"

    def __init__(self, first: Model, second: Model, alpha: float, norm: str = "zscore"):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"model.alpha={alpha} is outside [0, 1]")
        if norm not in BLEND_NORMS:
            raise ValueError(f"model.norm={norm!r} is not one of {BLEND_NORMS}")
        self.first, self.second = first, second
        self.config = BlendConfig(first.config.n_users, first.config.n_items, float(alpha),
                                  first.config.to_json(), second.config.to_json(), norm=norm)

    @classmethod
    def from_state(cls, config: dict, state: dict[str, torch.Tensor], rebuild=None) -> "Blend":
        """rebuild: registry.model_from_state, which rebuilds each part from its config."""
        def sub(prefix):
            return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        return cls(rebuild(config["first"], sub("first")), rebuild(config["second"], sub("second")),
                   config["alpha"], config.get("norm", "zscore"))

    @property
    def reads_order(self) -> bool:
        """A history's order matters when it matters to a part (a sequence model); the other
        part reads the same history as a set."""
        return self.first.reads_order or self.second.reads_order

    def item_side(self) -> BlendSide:
        return BlendSide(self.first.item_side(), self.second.item_side())

    def score(self, who: torch.Tensor, side: BlendSide, out=None, ws=None) -> torch.Tensor:
        """Known users or histories (if both parts can score them) -> (b, I)."""
        a = self.config.alpha
        return (a * self._norm(self.first.score(who, side.first))
                + (1 - a) * self._norm(self.second.score(who, side.second)))

    def own_spaces(self, of: str) -> tuple[str, ...]:
        return ("blend",)

    def default_space(self, of: str) -> str:
        return "blend"

    def similarity_side(self, of: str, space: str | None = None):
        """"blend": the parts' default similarities blended (models/similar.py); "history" and
        "tokens" from the first part that keeps the histories / token bags."""
        space = space or "blend"
        similar.check_space(space, ("blend",), of, self.kind)
        if space == "blend":
            return similar.Blended(self.first.similarity_side(of), self.second.similarity_side(of),
                                   self.config.alpha, self._norm)
        need = "hist_indptr" if space == "history" else "tok_indptr"
        part = self.first if self.first.keeps(need) else self.second
        return part.similarity_side(of, space)

    def _norm(self, s: torch.Tensor) -> torch.Tensor:
        return max_abs(s) if self.config.norm == "max" else standardise(s)

    def grow(self, bags) -> "Blend":
        return Blend(self.first.grow(bags), self.second.grow(bags), self.config.alpha, self.config.norm)

    def baked(self) -> "Blend":
        first, second = self.first.baked(), self.second.baked()
        if first is self.first and second is self.second:
            return self
        return Blend(first, second, self.config.alpha, self.config.norm)
