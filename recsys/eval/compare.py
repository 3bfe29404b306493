"""Paired comparison of two runs from their per-user test metrics (per_user.csv in each run
folder): for every metric, the means, the mean per-user difference (B - A), a 95% bootstrap
confidence interval of that difference (users resampled with replacement) and a two-sided
paired sign-flip permutation p-value. Users present in only one run are reported and left out.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from recsys.data.io import DataError


def load_per_user(run: str) -> pd.DataFrame:
    path = run if run.endswith(".csv") else os.path.join(run, "per_user.csv")
    if not os.path.exists(path):
        raise DataError(f"{path}: no per-user metrics (a run folder of train.py, or a per_user.csv)")
    df = pd.read_csv(path, dtype={"user": str})
    if "user" not in df:
        raise DataError(f"{path}: no 'user' column")
    return df


def paired(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean difference d = b - a with a 95% percentile bootstrap CI and a sign-flip p-value."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    n = len(d)
    if n == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    perms = np.empty(n_boot)
    for s in range(0, n_boot, 1000):
        m = min(1000, n_boot - s)
        boots[s:s + m] = d[rng.integers(0, n, (m, n))].mean(1)
        perms[s:s + m] = (d * rng.choice([-1.0, 1.0], (m, n))).mean(1)
    obs = d.mean()
    p = (1 + np.sum(np.abs(perms) >= abs(obs) - 1e-15)) / (n_boot + 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(obs), "lo": float(lo), "hi": float(hi), "p": float(p)}


def compare_runs(run_a: str, run_b: str, n_boot: int = 10_000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(table with one row per metric, {"users": n paired, "only_a": ..., "only_b": ...})."""
    a, b = load_per_user(run_a), load_per_user(run_b)
    metrics = [c for c in a.columns if "@" in c and c in b.columns]
    if not metrics:
        raise DataError(f"{run_a} and {run_b} share no metric column")
    j = a.merge(b, on="user", suffixes=("_a", "_b"))
    info = {"users": len(j), "only_a": int((~a["user"].isin(b["user"])).sum()),
            "only_b": int((~b["user"].isin(a["user"])).sum())}
    rows = []
    for m in metrics:
        r = paired(j[f"{m}_a"].to_numpy(), j[f"{m}_b"].to_numpy(), n_boot, seed)
        rows.append({"metric": m, "A": j[f"{m}_a"].mean(), "B": j[f"{m}_b"].mean(), **r})
    return pd.DataFrame(rows), info


def format_comparison(table: pd.DataFrame, info: dict, run_a: str, run_b: str) -> str:
    lines = [f"A = {run_a}", f"B = {run_b}",
             f"{info['users']} users in both runs ({info['only_a']} only in A, {info['only_b']} only in B)",
             f"{'metric':>12} {'A':>8} {'B':>8} {'B - A':>8} {'95% CI':>19} {'p':>7}"]
    for r in table.itertuples():
        star = " *" if r.lo > 0 or r.hi < 0 else ""
        lines.append(f"{r.metric:>12} {r.A:8.4f} {r.B:8.4f} {r.diff:+8.4f} [{r.lo:+8.4f}, {r.hi:+8.4f}] {r.p:7.4f}{star}")
    lines.append("* the 95% interval excludes 0 (paired bootstrap over users; p: sign-flip permutation test)")
    return "\n".join(lines)
