"""prepare_files protocol decisions on tiny files: id mapping, dropped rows, timestamps."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from recsys.train.build import eval_sets
from recsys.data.prepare import _numeric, prepare_files

from helpers import write_csv


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR, logger="recsys.data.prepare")


def pairs(prep, part) -> set[tuple]:
    return {(prep.users.ids[u], prep.items.ids[i]) for u, i in getattr(prep, part)}


def test_prepare_files_drops_and_counts_bad_test_rows(tmp_path):
    """Test rows of unknown users, unknown items, or pairs also in train are dropped and
    counted; the catalog is the item table plus training items; valid_ratio=0 -> no valid."""
    train = write_csv(tmp_path / "train.csv", ["user", "item"],
                      [("a", "x"), ("a", "y"), ("b", "y"), ("b", "w"), ("a", "x")])
    test = write_csv(tmp_path / "test.csv", ["user", "item"],
                     [("a", "z"), ("a", "x"), ("ghost", "y"), ("b", "nope"), ("b", "x")])
    items = write_csv(tmp_path / "items.csv", ["item", "title"],
                      [("x", "Red Apple"), ("y", "green apple"), ("z", "")])
    prep = prepare_files(train=train, test=test, items=items, valid_ratio=0.0)
    assert prep.users.ids == ["a", "b"]
    assert prep.items.ids == ["x", "y", "z", "w"]          # item table sorted, then extra train items
    assert pairs(prep, "train") == {("a", "x"), ("a", "y"), ("b", "y"), ("b", "w")}
    assert len(prep.train) == 4                            # the duplicate (a, x) is dropped
    assert pairs(prep, "test") == {("a", "z"), ("b", "x")}
    assert len(prep.valid) == 0
    r = prep.report
    assert r["train_duplicates_dropped"] == 1
    assert r["test_rows_already_seen"] == 1
    assert r["test_rows_unknown_user"] == 1 and r["test_rows_unknown_item"] == 1
    assert r["items_without_text"] == 2                    # z (empty title) and w (not in the table)
    assert prep.item_warm().tolist() == [True, True, False, True]
    assert prep.tokens.ids == ["[UNK]", "apple", "green", "red"]


def test_prepare_files_carves_valid_per_user(tmp_path):
    """valid_ratio > 0 moves round(n * ratio) training rows of each user to valid; eval_sets
    masks train for validation and train + valid for test."""
    rows = [(u, i) for u in range(4) for i in range(10)]
    train = write_csv(tmp_path / "train.csv", ["user", "item"], rows)
    test = write_csv(tmp_path / "test.csv", ["user", "item"], [(u, 10 + u) for u in range(4)])
    items = write_csv(tmp_path / "items.csv", ["item", "t"], [(i, f"w{i}") for i in range(14)])
    prep = prepare_files(train=train, test=test, items=items, valid_ratio=0.2, seed=1)
    assert np.bincount(prep.valid[:, 0], minlength=4).tolist() == [2, 2, 2, 2]
    assert np.bincount(prep.train[:, 0], minlength=4).tolist() == [8, 8, 8, 8]
    assert not pairs(prep, "valid") & pairs(prep, "train")
    sets = eval_sets(prep)
    assert len(sets["val_seen"][1]) == 32 and len(sets["test_seen"][1]) == 40
    assert sets["test_target"][0].tolist() == [0, 1, 2, 3, 4]


def test_numeric_timestamps_pass_through():
    """Numeric timestamps are kept as float seconds."""
    assert _numeric(pd.Series([1577836800, 5]), "t", allow_datetime=True).tolist() == [1577836800.0, 5.0]


def test_datetime_strings_become_unix_seconds():
    """Datetime strings become Unix seconds, so events 10 minutes apart stay distinct."""
    s = pd.Series(["2020-01-01 00:00:00", "2020-01-01 00:10:00"])
    assert _numeric(s, "t", allow_datetime=True).tolist() == [1577836800, 1577837400]


def test_test_pairs_also_in_valid_are_dropped(tmp_path):
    """A test pair present in the given valid file is masked at test time, so it is dropped
    (and counted) like a test pair present in train."""
    train = write_csv(tmp_path / "train.csv", ["user", "item"], [(1, 1), (1, 2), (2, 1), (2, 3)])
    valid = write_csv(tmp_path / "valid.csv", ["user", "item"], [(1, 3), (2, 2)])
    test = write_csv(tmp_path / "test.csv", ["user", "item"], [(1, 3), (2, 4)])
    items = write_csv(tmp_path / "items.csv", ["item", "t"], [(i, f"w{i}") for i in range(1, 5)])
    prep = prepare_files(train=train, valid=valid, test=test, items=items)
    sets = eval_sets(prep)
    seen = {(u, int(i)) for u in range(prep.n_users)
            for i in sets["test_seen"][1][sets["test_seen"][0][u]:sets["test_seen"][0][u + 1]]}
    assert not {tuple(p) for p in prep.test.tolist()} & seen
    assert pairs(prep, "test") == {(2, 4)}
