"""Paired run comparison: bootstrap CI and sign-flip p-value on known cases, and the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.eval.compare import compare_runs, paired
from recsys.data.io import DataError


def test_constant_improvement_is_certain():
    a = np.linspace(0, 0.5, 30)
    r = paired(a, a + 0.1, n_boot=2000)
    assert r["diff"] == pytest.approx(0.1)
    assert r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)
    assert r["p"] < 0.002                      # only the all-same-sign flips reach |0.1|


def test_no_difference_is_not_significant():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    d = rng.normal(0, 0.1, 200)
    d -= d.mean()                              # exactly zero mean difference
    r = paired(a, a + d, n_boot=4000)
    assert abs(r["diff"]) < 1e-12
    assert r["lo"] < 0 < r["hi"]
    assert r["p"] > 0.9


def test_bootstrap_ci_matches_normal_approximation():
    rng = np.random.default_rng(1)
    d = rng.normal(0.02, 0.2, 2000)
    r = paired(np.zeros_like(d), d, n_boot=4000)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert r["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * se)


def test_compare_runs_pairs_by_user(tmp_path):
    pd.DataFrame({"user": ["u1", "u2", "u3"], "history": ["1-5"] * 3, "ndcg@10": [0.1, 0.2, 0.3]}).to_csv(
        tmp_path / "a.csv", index=False)
    pd.DataFrame({"user": ["u3", "u2", "u4"], "ndcg@10": [0.5, 0.2, 0.9]}).to_csv(tmp_path / "b.csv", index=False)
    table, info = compare_runs(str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), n_boot=200)
    assert info == {"users": 2, "only_a": 1, "only_b": 1}
    row = table.iloc[0]
    assert row["metric"] == "ndcg@10"
    assert row["A"] == pytest.approx(0.25) and row["B"] == pytest.approx(0.35) and row["diff"] == pytest.approx(0.1)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="per_user.csv"):
        compare_runs(str(tmp_path / "nope"), str(tmp_path / "nope2"))
