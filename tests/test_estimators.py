"""Estimators (recsys/train/estimators.py): a model object unfitted until fit, its parameters
from the same defaults as configs/model/*.yaml, answering as the Recommender it fits."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import recsys
from recsys.models.registry import model_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_KINDS = {"EASE": "ease", "LowRankEASE": "ease_lowrank", "ItemKNN": "itemknn", "UserKNN": "userknn", "ContentKNN": "content_knn",
                "Popularity": "popularity"}


def _frames():
    df = pd.DataFrame({"user": [1, 1, 1, 2, 2, 3, 3, 4, 4, 4], "item": [10, 11, 12, 10, 12, 11, 13, 10, 11, 13]})
    items = pd.DataFrame({"item": [10, 11, 12, 13, 14],
                          "title": ["red film", "blue film", "red blue", "green film", "red green"]})
    return df, items


def _config_keys(kind: str) -> set:
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "model", f"{kind}.yaml")))
    return set(cfg) - {"_target_", "_convert_", "kind", "search_space", "defaults"}


@pytest.mark.parametrize("name", sorted(MEMORY_KINDS))
def test_a_kinds_parameters_are_its_config_files_keys_and_values(name):
    """One source: an estimator's get_params() is exactly the keys and values of
    configs/model/<kind>.yaml (the model class declares the fields it reads)."""
    kind = MEMORY_KINDS[name]
    est = getattr(recsys, name)()
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "model", f"{kind}.yaml")))
    assert set(model_class(kind).fields) == _config_keys(kind)
    assert est.get_params() == {k: cfg[k] for k in _config_keys(kind)}


def test_unfitted_until_fit_then_the_same_answers_as_recsys_fit():
    df, items = _frames()
    est = recsys.EASE(lam=50.0)
    assert repr(est) == "EASE(lam=50.0)" and est.get_params()["lam"] == 50.0 and not est.is_fitted
    with pytest.raises(recsys.NotFittedError, match=r"EASE is not fitted yet: call .fit\(interactions\) before .recommend\(\)"):
        est.recommend(1, k=2)
    assert est.fit(df, items=items) is est and est.is_fitted
    want = recsys.fit(df, items, model="ease", lam=50.0)
    assert est.recommend([1, 2], k=2)[0].tolist() == want.recommend([1, 2], k=2)[0].tolist()
    assert est.similar_items(10, k=2)[0].tolist() == want.similar_items(10, k=2)[0].tolist()
    assert est.set_params(lam=5.0) is est and est.get_params()["lam"] == 5.0


def test_bad_parameters_are_refused_when_the_estimator_is_made():
    with pytest.raises(ValueError, match=r"model.lam=-1 must be a finite number > 0"):
        recsys.EASE(lam=-1)
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['k'\]"):
        recsys.EASE(k=5)
    with pytest.raises(ValueError, match=r"model.k=0"):
        recsys.ItemKNN().set_params(k=0)
    with pytest.raises(AttributeError, match="no attribute 'recomend'"):
        recsys.EASE().recomend


def test_a_blend_of_estimators_and_a_learned_estimator():
    df, items = _frames()
    blend = recsys.Blend(recsys.EASE(lam=10.0), recsys.ContentKNN(k=3), alpha=0.8, norm="max").fit(df, items=items)
    p = blend.get_params()
    assert p["alpha"] == 0.8 and p["first"]["lam"] == 10.0 and p["second"]["kind"] == "content_knn"
    assert blend.recommend(1, k=2)[0].tolist() == \
        recsys.fit(df, items, model={"kind": "blend", "alpha": 0.8, "norm": "max", "first": {"kind": "ease", "lam": 10.0},
                                     "second": {"kind": "content_knn", "k": 3}}).recommend(1, k=2)[0].tolist()
    hybrid = recsys.Hybrid(dim=8)
    assert hybrid.get_params()["dim"] == 8 and hybrid.get_params()["optim"]["loss"] == "softmax"
    hybrid.fit(df, items=items, max_epochs=2)
    assert len(hybrid.recommend(1, k=2)[0]) == 2


def test_a_memory_estimator_fits_without_lightning():
    """`import recsys` and a memory model's fit import neither Lightning nor Hydra."""
    code = ("import sys, pandas as pd, recsys; "
            "recsys.ItemKNN(k=2).fit(pd.DataFrame({'user': [1, 1, 2, 2], 'item': [5, 6, 5, 7]})).recommend(1, k=1); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'hydra', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_on_epoch_reports_every_epoch_of_a_learned_fit():
    import numpy as np
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((30, 20)) < 0.5)                # ~10 items a user: a validation part
    df = pd.DataFrame({"user": u, "item": i})
    seen = []
    recsys.Collaborative(dim=8).fit(df, max_epochs=3, on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen][:3] == [0, 1, 2]                # (then the refit's epochs, if any)
    assert all(isinstance(v, float) for _, m in seen for v in m.values())
    assert any(k.startswith("val/ndcg") for k in seen[0][1]) and "train/loss_epoch" in seen[0][1]
    with pytest.raises(TypeError, match="on_epoch must be a function"):
        recsys.fit(df, model="hybrid", on_epoch="print")
