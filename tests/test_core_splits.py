"""Seeded splits: random per-user proportions, leave-last by time, global temporal cut."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.splits import TEST, TRAIN, VALID, leave_last_split, random_split, temporal_split


def interactions(seed: int = 0, n_users: int = 60, max_rows: int = 40, ties: bool = False) -> pd.DataFrame:
    """Users with 1..max_rows interactions, shuffled rows, string user ids, random timestamps
    (from a small range when `ties`, so many timestamps repeat)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = 1 + (u % max_rows) if u < max_rows else int(rng.integers(1, max_rows + 1))
        for i in rng.choice(500, size=n, replace=False):
            ts = int(rng.integers(0, 5)) if ties else int(rng.integers(0, 10**9))
            rows.append((f"u{u}", int(i), ts))
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def per_user_counts(df: pd.DataFrame, label: np.ndarray) -> pd.DataFrame:
    return pd.crosstab(df["user"], label).reindex(columns=[TRAIN, VALID, TEST], fill_value=0)


def test_random_split_is_seeded():
    """Same seed -> same labels; a different seed -> different labels."""
    df = interactions()
    a, b, c = random_split(df, 0.1, 0.2, seed=5), random_split(df, 0.1, 0.2, seed=5), random_split(df, 0.1, 0.2, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (len(df),) and set(np.unique(a)) <= {TRAIN, VALID, TEST}


def test_random_split_exact_counts_per_user():
    """Each user gets round(n*test) test and round(n*valid) valid rows (half up), when that
    leaves a training row; every user keeps at least one training row."""
    df = interactions(n_users=80)
    label = random_split(df, valid=0.1, test=0.2, seed=1)
    counts = per_user_counts(df, label)
    n = counts.sum(axis=1)
    want_test = np.floor(n * 0.2 + 0.5).astype(int)
    want_valid = np.floor(n * 0.1 + 0.5).astype(int)
    roomy = want_test + want_valid <= n - 1
    assert roomy.sum() > 40
    np.testing.assert_array_equal(counts.loc[roomy, TEST], want_test[roomy])
    np.testing.assert_array_equal(counts.loc[roomy, VALID], want_valid[roomy])
    assert (counts[TRAIN] >= 1).all()
    # a user with 40 rows: exactly 8 test, 4 valid, 28 train
    big = n[n == 40].index[0]
    assert counts.loc[big].tolist() == [28, 4, 8]


def test_random_split_small_users_give_up_valid_first():
    """With 1 row everything is train; with 2 rows and valid=test=0.3 the one held-out row is
    test (valid gives up its row first)."""
    df = pd.DataFrame({"user": ["a", "b", "b"], "item": [1, 2, 3]})
    label = random_split(df, valid=0.3, test=0.3, seed=0)
    assert label[0] == TRAIN
    assert sorted(label[1:].tolist()) == [TRAIN, TEST]


def test_random_split_overall_proportions():
    """Over many users with 100 rows each the labels are exactly 70/10/20 per user and the
    labels within a user are a random subset (differ between users' row orders)."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": np.repeat(np.arange(30), 100), "item": np.tile(np.arange(100), 30)})
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    label = random_split(df, valid=0.1, test=0.2, seed=3)
    counts = per_user_counts(df, label)
    assert (counts[TRAIN] == 70).all() and (counts[VALID] == 10).all() and (counts[TEST] == 20).all()
    test_items = [frozenset(df.item[(df.user == u) & (label == TEST)]) for u in range(30)]
    assert len(set(test_items)) == 30


@pytest.mark.parametrize("bad", [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)])
def test_random_split_rejects_bad_ratios(bad):
    """Ratios outside [0, 1) or summing to >= 1 raise ValueError."""
    with pytest.raises(ValueError):
        random_split(interactions(n_users=3), *bad)


@pytest.mark.parametrize("ties", [False, True])
def test_leave_last_split_by_time(ties):
    """Per user with >= 3 rows: the test row has the latest timestamp, the valid row the latest
    of the rest; all train rows are no later than valid. 2 rows: one train, one test; 1 row:
    train."""
    df = interactions(seed=2, ties=ties)
    label = leave_last_split(df, valid=1, test=1, seed=0)
    for user, g in df.assign(label=label).groupby("user"):
        lab = g["label"].to_numpy()
        ts = g["timestamp"].to_numpy()
        n = len(g)
        if n == 1:
            assert lab.tolist() == [TRAIN]
            continue
        assert (lab == TEST).sum() == 1
        assert ts[lab == TEST][0] == ts.max()
        if n == 2:
            assert (lab == TRAIN).sum() == 1
            continue
        assert (lab == VALID).sum() == 1
        rest = ts[lab != TEST]
        assert ts[lab == VALID][0] == rest.max()
        assert ts[lab == TRAIN].max() <= ts[lab == VALID][0]


def test_leave_last_split_breaks_ties_by_row_order():
    """Equal timestamps: the row read later counts as later (deterministic, whatever the seed),
    the order Prepared.sequences gives a user's events."""
    df = pd.DataFrame({"user": [1, 1, 1, 2, 2, 2], "item": [5, 3, 9, 1, 2, 3], "timestamp": [7, 7, 7, 1, 2, 2]})
    want = [TRAIN, VALID, TEST, TRAIN, VALID, TEST]
    for seed in (0, 1, 2):
        assert leave_last_split(df, seed=seed).tolist() == want


def test_leave_last_split_needs_timestamps():
    """Without a timestamp column the time-based split raises ValueError."""
    with pytest.raises(ValueError):
        leave_last_split(pd.DataFrame({"user": [1, 1], "item": [1, 2]}))


@pytest.mark.parametrize("ties", [False, True])
def test_temporal_split_one_global_cut(ties):
    """Every test timestamp >= every valid timestamp >= every train timestamp, with
    round(n*test) test and round(n*valid) valid rows."""
    df = interactions(seed=3, ties=ties)
    label = temporal_split(df, valid=0.15, test=0.25, seed=0)
    ts = df["timestamp"].to_numpy()
    assert set(np.unique(label)) == {TRAIN, VALID, TEST}
    assert ts[label == TEST].min() >= ts[label == VALID].max()
    assert ts[label == VALID].min() >= ts[label == TRAIN].max()
    assert (label == TEST).sum() == round(len(df) * 0.25)
    assert (label == VALID).sum() == round(len(df) * 0.15)
    assert np.array_equal(label, temporal_split(df, valid=0.15, test=0.25, seed=0))


def test_temporal_split_rejects_bad_ratios():
    """Like random_split, temporal_split raises ValueError when valid + test >= 1."""
    df = pd.DataFrame({"user": np.arange(10) % 3, "item": np.arange(10), "timestamp": np.arange(10)})
    with pytest.raises(ValueError):
        temporal_split(df, valid=0.6, test=0.6)


def test_cold_items_split_holds_out_whole_items():
    """A seeded fraction of items has every row in test; the rest is split per user."""
    from recsys.data.splits import TEST, TRAIN, cold_items_split
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(0, 50, 3000), "item": rng.integers(0, 200, 3000)}).drop_duplicates()
    lab = cold_items_split(df, cold=0.2, valid=0.1, test=0.1, seed=5)
    assert np.array_equal(lab, cold_items_split(df, cold=0.2, valid=0.1, test=0.1, seed=5))
    per_item = pd.DataFrame({"item": df["item"].to_numpy(), "lab": lab}).groupby("item")["lab"]
    all_test = per_item.apply(lambda x: bool((x == TEST).all()))
    n_items = df["item"].nunique()
    assert all_test.sum() >= round(0.2 * n_items)                # the held-out items (plus rare natural ones)
    assert all_test.sum() < round(0.2 * n_items) + 10
    assert (lab == TRAIN).mean() > 0.6                            # warm rows are mostly train
    with pytest.raises(ValueError, match="cold"):
        cold_items_split(df, cold=0.0)
