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
