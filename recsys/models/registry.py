"""The one table of model kinds: what an export's config.json names, and the class that
rebuilds it. Nothing else in the package switches on kind strings.

    model_from_state(config, state)   any recsys model from its JSON config and state_dict
    model_class(kind)                 the class of a kind ("learned" when config has none)
"""
from __future__ import annotations

import torch

from recsys.models.base import Model
from recsys.models.blend import Blend
from recsys.models.ease import EASE
from recsys.models.ease_lowrank import LowRankEASE
from recsys.models.knn import ContentKNN, ItemKNN, UserKNN
from recsys.models.learned import Scorer
from recsys.models.popularity import Popularity
from recsys.models.sequence import Sequence

KINDS: dict[str, type[Model]] = {cls.kind: cls for cls in (Scorer, ItemKNN, ContentKNN, UserKNN, EASE, LowRankEASE,
                                                          Popularity, Blend, Sequence)}


def model_class(kind: str) -> type[Model]:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; the kinds are {sorted(KINDS)}")
    return KINDS[kind]


def model_from_state(cfg: dict, state: dict[str, torch.Tensor]) -> Model:
    """Rebuild any recsys model from its JSON config and its state_dict tensors."""
    return model_class(cfg.get("kind", "learned")).from_state(cfg, state, model_from_state)


def fit_memory(config, *args, **kwargs) -> Model:
    """Fit the memory-based / closed-form model that config.kind (a MemoryConfig) names:
    model_class(config.kind).fit(config, hist_indptr, hist_indices, ...) (see memory.py)."""
    return model_class(config.kind).fit(config, *args, **kwargs)
