"""The one table of model kinds: what an export's config.json names, and how each is rebuilt.

`model_from_state(config, state)` rebuilds any recsys model from its JSON config and its
state_dict tensors (an export's model.safetensors); `bake(model)` gives the form an export
stores. Nothing else in the package switches on kind strings.
"""
from __future__ import annotations

import torch


def bake(model: torch.nn.Module) -> torch.nn.Module:
    """Pretrained token tables replaced by their projection, in a model or a blend's parts."""
    from recsys.models.memory import Blend
    if isinstance(model, Blend):
        first, second = bake(model.first), bake(model.second)
        if first is model.first and second is model.second:
            return model
        return Blend(first, second, model.config.alpha, model.config.norm)
    return model.baked() if hasattr(model, "baked") else model


def model_from_state(cfg: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Rebuild any recsys model from its JSON config and its state_dict tensors."""
    from recsys.models.memory import KNN_KINDS, Blend, MemoryConfig, MemoryScorer
    from recsys.models.learned import BUFFERS, FILL, Scorer, ScorerConfig
    kind = cfg.get("kind", "learned")
    if kind == "blend":
        def sub(prefix):
            return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        return Blend(model_from_state(cfg["first"], sub("first")), model_from_state(cfg["second"], sub("second")),
                     cfg["alpha"], cfg.get("norm", "zscore"))
    if kind in (*KNN_KINDS, "ease", "popularity"):
        return MemoryScorer.from_export(cfg, state)
    scorer = Scorer(ScorerConfig(**cfg), {k: state[k] for k in BUFFERS + FILL if k in state})
    scorer.load_state_dict(state, strict=True)
    return scorer
