"""configs/model/sequence.yaml and the code's defaults are one source: recsys.fit(model="sequence")
trains what python train.py model=sequence trains."""
from __future__ import annotations

import dataclasses
import inspect
import os

import yaml

from recsys.models.sequence import SequenceConfig
from recsys.train.sequence_module import SequenceModule
from recsys.train.specs import SequenceSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_config_file_states_the_code_defaults():
    with open(os.path.join(ROOT, "configs", "model", "sequence.yaml")) as f:
        cfg = yaml.safe_load(f)
    fields = {f.name: f.default for f in dataclasses.fields(SequenceConfig) if f.name not in ("n_users", "n_items", "n_tokens")}
    assert {k: cfg[k] for k in fields} == fields
    optim = {k: p.default for k, p in inspect.signature(SequenceModule.__init__).parameters.items()
             if k in ("loss", "n_neg", "lr", "weight_decay")}
    assert {k: cfg["optim"][k] for k in optim} == optim
    assert cfg["optim"]["batch_size"] == SequenceSpec.batch_size
    assert set(cfg) - set(fields) - {"_target_", "_convert_", "optim", "search_space"} == set()


def test_cold_boost_auto_is_the_validation_rate_and_the_refit_keeps_it():
    """cold_rate: (cold targets / warm targets) x (warm items / cold items) on the validation part,
    by hand; SequenceSpec.for_data fixes that number before the first fit (a refit has no
    validation part to measure it on), inside a blend too; a number given stays."""
    from types import SimpleNamespace

    import numpy as np

    from recsys.train.build import cold_rate
    from recsys.train.specs import as_spec
    warm = np.array([True, True, True, False, False])
    prep = SimpleNamespace(item_warm=lambda: warm, valid=np.array([[0, 0], [1, 3], [2, 3], [3, 1]]))
    assert cold_rate(prep) == 2 / 2 * 3 / 2
    assert cold_rate(SimpleNamespace(item_warm=lambda: warm, valid=np.zeros((0, 2), dtype=np.int64))) == 0.0
    spec = as_spec("sequence")
    assert spec.params.get("cold_boost", SequenceConfig.cold_boost) == "auto"
    assert spec.for_data(prep).params["cold_boost"] == 1.5
    assert as_spec({"kind": "sequence", "cold_boost": 2.0}).for_data(prep).params["cold_boost"] == 2.0
    blend = as_spec({"kind": "blend", "first": {"kind": "sequence"}, "second": {"kind": "ease"}}).for_data(prep)
    assert blend.first.params["cold_boost"] == 1.5 and blend.second.kind == "ease"
