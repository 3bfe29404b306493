"""One source of defaults: recsys.fit(model=KIND) fits exactly what `python train.py model=KIND`
fits (the model's fields and its optimisation), for every kind a config file names. Before,
recsys.fit trained the learned models with BPR and 8 negatives (the configs: softmax, 1,024) and
UserKNN with k 100 (the config: 50)."""
from __future__ import annotations

import hydra
import pytest

from recsys.train.specs import as_spec, resolved

KINDS = ["itemknn", "userknn", "content_knn", "ease", "ease_lowrank", "popularity", "hybrid", "collaborative", "content",
         "sequence", "als", "als_tokens"]


@pytest.mark.parametrize("kind", KINDS)
def test_fit_defaults_are_the_config_files(kind, compose, tmp_path):
    cfg = compose([f"model={kind}"], str(tmp_path))
    from_file = hydra.utils.instantiate(cfg.model)
    assert resolved(as_spec(kind)) == resolved(from_file)
