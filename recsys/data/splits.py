"""Seeded splits of an interaction frame with columns `user`, `item`[, `timestamp`].

Every function returns a label array (N,) of 0 = train, 1 = valid, 2 = test, aligned with the
frame's rows. The per-user splits never leave a user without a training interaction.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.data.io import DataError

TRAIN, VALID, TEST = 0, 1, 2
NEW_GIVEN, NEW_TARGET = 3, 4     # new-user protocol: history given at inference / held-out target


def _rank_within_user(df: pd.DataFrame, key: np.ndarray):
    """(codes (N,), n per user (U,), pos (N,)): pos = 0 for the row of highest `key` of its user."""
    codes, _ = pd.factorize(df["user"].to_numpy())
    n = np.bincount(codes)
    order = np.lexsort((-key, codes))
    starts = np.cumsum(n) - n                      # (U,) first position of each user
    pos = np.empty(len(df), dtype=np.int64)
    pos[order] = np.arange(len(df)) - np.repeat(starts, n)
    return codes, n, pos


def _cut(codes, pos, n_test, n_valid) -> np.ndarray:
    nt, nv = n_test[codes], n_valid[codes]
    return np.where(pos < nt, TEST, np.where(pos < nt + nv, VALID, TRAIN)).astype(np.int8)


def _check_ratios(valid: float, test: float) -> None:
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise DataError(f"data.split: ratios must be in [0, 1) with valid + test < 1, got valid={valid}, test={test}")


def random_split(df: pd.DataFrame, valid: float = 0.1, test: float = 0.1, seed: int = 0) -> np.ndarray:
    """Per user, a seeded random round(n*test) interactions to test and round(n*valid) to valid
    (halves round up); if that would leave no training row, valid gives up rows first, then test."""
    _check_ratios(valid, test)
    rng = np.random.default_rng(seed)
    codes, n, pos = _rank_within_user(df, rng.random(len(df)))
    n_test = np.floor(n * test + 0.5).astype(np.int64)
    n_valid = np.floor(n * valid + 0.5).astype(np.int64)
    over = np.maximum(n_test + n_valid - (n - 1), 0)
    cut = np.minimum(over, n_valid)
    return _cut(codes, pos, n_test - (over - cut), n_valid - cut)


def _time_order(df: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Rank of each row by timestamp, equal timestamps in row (file) order: deterministic, and
    the order recsys.data.prepare.Prepared.sequences gives a user's events. (N,) float64.
    (seed: unused, kept for the split functions' common signature.)"""
    if "timestamp" not in df:
        raise DataError("this split needs a timestamp column (set data.time_col)")
    ts = df["timestamp"].to_numpy(dtype=np.float64)
    return np.lexsort((np.arange(len(df)), ts)).argsort().astype(np.float64)


def leave_last_split(df: pd.DataFrame, valid: int = 1, test: int = 1, seed: int = 0) -> np.ndarray:
    """Per user, the last `test` interactions by time to test, the `valid` before them to valid
    (equal timestamps: the row read later counts as later)."""
    codes, n, pos = _rank_within_user(df, _time_order(df, seed))
    n_test = np.minimum(int(test), n - 1)
    return _cut(codes, pos, n_test, np.minimum(int(valid), n - 1 - n_test))


def temporal_split(df: pd.DataFrame, valid: float = 0.1, test: float = 0.1, seed: int = 0) -> np.ndarray:
    """Global temporal: the latest `test` fraction of all interactions to test, the `valid`
    fraction before it to valid (one cut time for everybody, so nothing from the future leaks
    into train). Users with no training rows are dropped from valid/test by the caller."""
    _check_ratios(valid, test)
    order = np.argsort(_time_order(df, seed))
    n = len(df)
    n_test, n_valid = int(np.floor(n * test + 0.5)), int(np.floor(n * valid + 0.5))
    label = np.zeros(n, dtype=np.int8)
    label[order[n - n_test:]] = TEST
    label[order[n - n_test - n_valid: n - n_test]] = VALID
    return label


def _held_out(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool: the rows whose value is among a seeded `share` (rounded) of the distinct values."""
    codes, uniq = pd.factorize(values, sort=True)
    held = np.zeros(len(uniq), dtype=bool)
    held[rng.choice(len(uniq), int(np.floor(len(uniq) * share + 0.5)), replace=False)] = True
    return held[codes]


def cold_items_split(df: pd.DataFrame, cold: float = 0.1, valid: float = 0.1, test: float = 0.1,
                     seed: int = 0) -> np.ndarray:
    """Cold-item protocol: a seeded `cold` fraction of the distinct items is held out entirely,
    every interaction with them goes to test (none to train or valid), so they can only be
    recommended from their content. The other rows are split per user at random (valid, test),
    so test also holds warm items and the warm/cold slices are measured on the same users."""
    if not 0 < cold < 1:
        raise DataError(f"data.split.cold={cold} must be in (0, 1)")
    _check_ratios(valid, test)
    rng = np.random.default_rng(seed)
    is_cold = _held_out(df["item"].to_numpy(), cold, rng)
    label = np.full(len(df), TEST, dtype=np.int8)
    warm = df[~is_cold].reset_index(drop=True)
    if len(warm):
        label[~is_cold] = random_split(warm, valid, test, seed + 1)
    return label


def new_users_split(df: pd.DataFrame, new: float = 0.1, given: float = 0.5, valid: float = 0.1,
                    test: float = 0.1, seed: int = 0) -> np.ndarray:
    """New-user protocol: a seeded `new` fraction of the users is held out of training entirely.
    Each new user's rows are split at random into NEW_GIVEN (a `given` share, at least one row:
    the history handed to the model at inference time, no retraining) and NEW_TARGET (the rest,
    at least one row when the user has two or more). The other users are split per user at
    random (valid, test) as usual."""
    if not 0 < new < 1:
        raise DataError(f"data.split.new={new} must be in (0, 1)")
    if not 0 < given < 1:
        raise DataError(f"data.split.given={given} must be in (0, 1)")
    _check_ratios(valid, test)
    rng = np.random.default_rng(seed)
    is_new = _held_out(df["user"].to_numpy(), new, rng)
    label = np.empty(len(df), dtype=np.int8)
    old = df[~is_new].reset_index(drop=True)
    if len(old):
        label[~is_new] = random_split(old, valid, test, seed + 1)
    if is_new.any():
        sub = df[is_new].reset_index(drop=True)
        c, n, pos = _rank_within_user(sub, rng.random(len(sub)))
        n_given = np.clip(np.floor(n * given + 0.5).astype(np.int64), 1, np.maximum(n - 1, 1))
        label[is_new] = np.where(pos < n_given[c], NEW_GIVEN, NEW_TARGET)
    return label


SPLITS = {"random": random_split, "leave_last": leave_last_split, "temporal": temporal_split,
          "colditems": cold_items_split, "newusers": new_users_split}
