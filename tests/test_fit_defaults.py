"""One source of defaults: recsys.fit(model=KIND) fits exactly what `python train.py model=KIND`
fits (the model's fields and its optimisation), for every kind a config file names. Before,
recsys.fit trained the learned models with BPR and 8 negatives (the configs: softmax, 1,024) and
UserKNN with k 100 (the config: 50)."""
from __future__ import annotations

import dataclasses
import inspect

import hydra
import pytest

from recsys.models.learned import ScorerConfig
from recsys.models.memory import MemoryConfig
from recsys.models.sequence import SequenceConfig
from recsys.train.module import RecsysModule
from recsys.train.sequence_module import SequenceModule
from recsys.train.specs import Memory, SequenceSpec, as_spec

KINDS = ["itemknn", "userknn", "content_knn", "ease", "popularity", "hybrid", "collaborative", "content", "sequence"]
SIZES = {"n_users": 1, "n_items": 1, "n_tokens": 1}


def _resolved(spec) -> dict:
    """Every value the fit will use: the config dataclass's fields and the module's optimisation."""
    if isinstance(spec, Memory):
        return dataclasses.asdict(MemoryConfig(kind=spec.kind, n_users=1, n_items=1, **spec.params))
    if isinstance(spec, SequenceSpec):
        module, cfg = SequenceModule, dataclasses.asdict(SequenceConfig(**SIZES, **spec.params))
        optim = {"batch_size": SequenceSpec.batch_size}
    else:
        module, cfg = RecsysModule, dataclasses.asdict(ScorerConfig(**SIZES, variant=spec.variant, **spec.params))
        cfg["fold_in_lambda"] = spec.fold_in_lambda
        optim = {"batch_size": 1024, "batching": "interactions", "user_run": 0}
    optim.update({k: p.default for k, p in inspect.signature(module.__init__).parameters.items()
                  if p.default is not inspect.Parameter.empty and k != "ks"})
    return {**cfg, "optim": {**optim, **spec.optim}}


@pytest.mark.parametrize("kind", KINDS)
def test_fit_defaults_are_the_config_files(kind, compose, tmp_path):
    cfg = compose([f"model={kind}"], str(tmp_path))
    from_file = hydra.utils.instantiate(cfg.model)
    assert _resolved(as_spec(kind)) == _resolved(from_file)
