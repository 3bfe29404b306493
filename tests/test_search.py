"""Model selection (recsys/train/search.py): the search finds known optima, the refit fits on
train + validation (counted), and nothing reads the test split before the final evaluation."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recsys.train.search import optimise, parse_space, refit_data, refit_wanted, search, select_and_fit, with_params
from recsys.train.specs import FitContext, as_spec


class Poison:
    """Stands in for the test split: any use of it fails the test."""

    def _fail(self, *a, **k):
        raise AssertionError("the test split was read before the final evaluation")

    __getitem__ = __len__ = __array__ = __iter__ = shape = _fail

    def __getattr__(self, name):
        self._fail()


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    from conftest import write_tiny_dataset
    from recsys.data.prepare import prepare_files
    p = write_tiny_dataset(str(tmp_path_factory.mktemp("d")), n_users=40, n_items=60)
    return prepare_files(train=p["train"], test=p["test"], items=p["items"], valid_ratio=0.2, seed=1)


def _val_sets(prep):
    from recsys.train.build import eval_sets
    return eval_sets(prep)


def test_optimise_finds_the_known_best_of_a_toy_objective():
    """TPE over a float and a categorical: the maximum of -(x - 3)^2 - [c != 'b'] is x = 3, c = b."""
    space = parse_space({"x": {"low": -10.0, "high": 10.0}, "c": {"choices": ["a", "b", "c"]}})

    def f(trial):
        x, c = trial.suggest_float("x", -10, 10), trial.suggest_categorical("c", ["a", "b", "c"])
        return -(x - 3) ** 2 - (c != "b")
    study = optimise(f, space, trials=60, seed=0)
    assert study.best_params["c"] == "b"
    assert abs(study.best_params["x"] - 3) < 0.5


def test_search_picks_the_brute_force_best(prep):
    """ItemKNN's k on a grid: the search's winner is the k whose validation NDCG@10, computed
    directly for every choice, is highest; the trials table holds every choice once."""
    from recsys.eval.evaluation import evaluate
    sets = _val_sets(prep)
    ks = [1, 3, 10, 40]
    direct = {}
    for k in ks:
        m = as_spec({"kind": "itemknn", "k": k}).build(prep)
        direct[k] = evaluate(m, sets["val_target"], sets["val_seen"], [10], 64, "val/")[0]["val/ndcg@10"]
    assert len(set(np.round(list(direct.values()), 6))) > 1      # the choice matters here
    res = search(as_spec({"kind": "itemknn"}), {"k": {"choices": ks}}, prep, sets, FitContext(ks=(10,)),
                 trials=10, sampler="grid")
    best_k = max(ks, key=lambda k: (direct[k], -ks.index(k)))
    assert res.best_params == {"k": best_k}
    assert res.best_value == pytest.approx(direct[best_k])
    assert sorted(t["params.k"] for t in res.trials) == ks
    assert res.spec.to_dict()["k"] == best_k


@pytest.fixture(scope="module")
def prep300(tmp_path_factory):
    from conftest import write_tiny_dataset
    from recsys.data.prepare import prepare_files
    p = write_tiny_dataset(str(tmp_path_factory.mktemp("d300")), n_users=300, n_items=60)
    return prepare_files(train=p["train"], test=p["test"], items=p["items"], valid_ratio=0.2, seed=1)


def test_the_default_stays_unless_the_best_trial_is_significantly_better(prep, prep300):
    """The config's own values are trial 0. A best trial whose validation gain is within the
    noise (an identical configuration, found again) leaves the default; a default far worse
    than the best (ItemKNN with one neighbour) is replaced."""
    sets = _val_sets(prep)
    ctx = FitContext(ks=(10,))
    same = search(as_spec({"kind": "itemknn", "k": 40}), {"k": {"choices": [40, 41]}}, prep, sets, ctx,
                  trials=4, sampler="random")
    assert same.trials[0]["params.k"] == 40 and same.best_params == {"k": 40}
    bad = search(as_spec({"kind": "itemknn", "k": 1, "similarity": "jaccard"}), {"k": {"low": 1, "high": 60}},
                 prep300, _val_sets(prep300), ctx, trials=6, sampler="random")
    assert bad.trials[0]["params.k"] == 1
    assert not bad.extra["vs_default"]["kept_default"] and bad.extra["vs_default"]["p"] < 0.05
    assert bad.best_params["k"] > 1
    off = search(as_spec({"kind": "itemknn", "k": 40}), {"k": {"choices": [40, 3]}}, prep, sets, ctx,
                 trials=3, sampler="random", guard=None)
    assert "vs_default" not in off.extra


def test_refit_data_merges_validation_into_train(prep):
    full = refit_data(prep)
    assert len(full.train) == len(prep.train) + len(prep.valid) and len(full.valid) == 0
    assert len(full.train_ratings) == len(full.train)
    assert np.array_equal(full.train_ratings[len(prep.train):], prep.valid_ratings)
    assert full.test is prep.test
    # the validation pairs really are the carved ones: none of them was in train before
    key = lambda p: set(map(tuple, p.tolist()))
    assert key(full.train) == key(prep.train) | key(prep.valid)


def test_refit_fits_on_train_plus_validation_counted(prep):
    """Popularity refit: its counts sum to train + valid interactions, and they equal the
    counts of those pairs; without refit, to train alone."""
    sets = _val_sets(prep)
    spec = as_spec("popularity")
    choice = select_and_fit(spec, prep, sets, FitContext(ks=(10,)), None, refit="auto")
    model, metrics, info = choice.model, choice.metrics, choice.info
    n = len(prep.train) + len(prep.valid)
    assert prep.valid_carved and info["refit"]["n_train"] == n and metrics["refit/n_train"] == n
    counts = torch.bincount(torch.from_numpy(np.concatenate([prep.train, prep.valid])[:, 1]), minlength=prep.n_items)
    assert torch.equal(model.pop.round().long(), counts)
    other = select_and_fit(spec, prep, sets, FitContext(ks=(10,)), None, refit=False)
    plain, info2 = other.model, other.info
    assert "refit" not in info2 and int(plain.pop.sum()) == len(prep.train)


def test_refit_switch(prep):
    assert refit_wanted("auto", prep) and refit_wanted(True, prep) and not refit_wanted("false", prep)
    with pytest.raises(ValueError, match="data.refit"):
        refit_wanted("sometimes", prep)


@pytest.mark.parametrize("model,space", [
    ("ease", {"lam": {"low": 1.0, "high": 500.0, "log": True}}),
    ({"kind": "blend", "first": {"kind": "ease"}, "second": {"kind": "content_knn", "k": 10}},
     {"alpha": {"low": 0.3, "high": 1.0}, "first.lam": {"choices": [10.0, 100.0]}}),
    ({"kind": "collaborative", "dim": 8, "optim": {"n_neg": 8, "batch_size": 64}},
     {"optim.lr": {"low": 0.001, "high": 0.05, "log": True}}),
])
def test_the_test_split_is_never_read_before_the_final_evaluation(prep, model, space):
    """The search and the refit see a prepared dataset whose test part and test CSRs fail on
    any use; both finish. (Then the final evaluation is the first reader of the test split.)"""
    import dataclasses
    poisoned = dataclasses.replace(prep, test=Poison())
    sets = {**_val_sets(prep), "test_target": Poison(), "test_seen": Poison()}
    ctx = FitContext(ks=(10,), max_epochs=2)
    res = search(as_spec(model), space, poisoned, sets, ctx, trials=3)
    assert len(res.trials) == 3 and np.isfinite(res.best_value)
    with pytest.raises(AssertionError, match="test split was read"):     # the poison does bite
        np.asarray(poisoned.test)


def test_learned_search_records_epochs_and_refits_for_them(prep):
    """A learned trial trains with early stopping; the epoch of its best validation value is
    what the refit trains for (max_epochs of the refit trainer)."""
    from recsys.train.search import EpochCurve, refit_context
    sets = _val_sets(prep)
    ctx = FitContext(ks=(10,), max_epochs=3)
    res = search(as_spec({"kind": "collaborative", "dim": 8, "optim": {"n_neg": 8, "batch_size": 64}}),
                 {"optim.lr": {"choices": [0.01, 0.05]}}, prep, sets, ctx, trials=2, sampler="grid")
    assert all(1 <= t["epochs"] <= 3 for t in res.trials)
    assert res.best_epochs == next(t["epochs"] for t in res.trials if t["value"] == res.best_value)
    assert refit_context(ctx, res.best_epochs).max_epochs == res.best_epochs
    assert res.model.config.fold_in_lambda == res.extra["fold_in_lambda"]          # chosen on validation
    assert res.spec.to_dict()["fold_in_lambda"] == "auto"                # a refit chooses its own
    curve = EpochCurve("val/ndcg@10")
    curve.values = [0.1, 0.3, 0.2]
    assert curve.best == 0.3 and curve.best_epoch == 2


@pytest.mark.parametrize("space,match", [
    ({"lam": 3}, "search_space.lam must be a mapping"),
    ({"lam": {"low": 5.0}}, "search_space.lam needs low and high"),
    ({"lam": {"low": 0.0, "high": 5.0, "log": True}}, "search_space.lam: low=0.0"),
    ({"k": {"choices": []}}, "search_space.k.choices is empty"),
    ({"k": {"type": "str", "low": 1, "high": 2}}, "search_space.k.type='str'"),
])
def test_bad_spaces_get_one_line_errors(space, match):
    with pytest.raises(ValueError, match=match):
        parse_space(space)


def test_with_params_sets_nested_keys_and_names_a_missing_section():
    cfg = {"kind": "blend", "first": {"kind": "ease", "lam": 1.0}, "alpha": 0.5}
    out = with_params(cfg, {"first.lam": 7.0, "alpha": 0.9})
    assert out["first"]["lam"] == 7.0 and out["alpha"] == 0.9 and cfg["first"]["lam"] == 1.0
    with pytest.raises(ValueError, match="no section 'optim'"):
        with_params(cfg, {"optim.lr": 0.1})


def test_train_py_searches_refits_and_records_the_choice(tiny_files, tmp_path, compose):
    """One command: search (trials.csv, metrics), refit on train + valid (counted), the chosen
    configuration in the export's config.json."""
    import pandas as pd

    import train
    overrides = ["data=csv", f"data.train={tiny_files['train']}", f"data.test={tiny_files['test']}",
                 f"data.items={tiny_files['items']}", "trainer.accelerator=cpu", "logger=none",
                 "report.projector=false", "model=ease", "search.trials=3"]
    m = train.run(compose(overrides, str(tmp_path)))
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"complete"} and "params.lam" in trials
    meta = json.load(open(tmp_path / "export" / "config.json"))["meta"]
    assert trials["params.lam"][0] == 200.0                 # the config's own value is trial 0
    if meta["search"]["vs_default"]["kept_default"]:        # the best trial was not significantly better
        assert m["search/params.lam"] == 200.0
    else:
        assert m["search/params.lam"] == pytest.approx(trials["params.lam"][trials["value"].idxmax()])
    assert meta["search"]["params"]["lam"] == m["search/params.lam"]
    assert meta["model"]["lam"] == m["search/params.lam"]
    split = {p: len(pd.read_csv(tmp_path / "split" / f"{p}.csv")) for p in ("train", "valid")}
    assert meta["refit"]["n_train"] == split["train"] + split["valid"] == m["refit/n_train"]
    assert os.path.exists(tmp_path / "export" / "model.safetensors")


def test_trials_become_hparams_runs(tmp_path):
    """Each trial is one HParams run under <log dir>/trials/<number>, holding its parameters
    and its validation value (read back from the event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recsys.train.run import log_trials
    from recsys.train.search import SearchResult

    class Logger:
        log_dir = str(tmp_path)
    trials = [{"number": 0, "state": "complete", "value": 0.25, "seconds": 1.0, "epochs": None, "params.lam": 200.0},
              {"number": 1, "state": "pruned", "value": None, "seconds": 2.0, "epochs": 3, "params.lam": 10.0}]
    log_trials([Logger()], SearchResult({"lam": 200.0}, 0.25, None, trials, None))
    assert sorted(os.listdir(tmp_path / "trials")) == ["000", "001"]
    acc = EventAccumulator(str(tmp_path / "trials" / "000"))
    acc.Reload()
    assert acc.Scalars("trial/val/ndcg@10")[0].value == pytest.approx(0.25)
    assert "_hparams_/session_start_info" in acc.summary_metadata
