"""Every bad input of docs/bad_input.md gets its one-line error (or its documented policy),
naming the file, column, row or argument at fault. One test per row of that table."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from recsys import Recommender
from recsys.data.prepare import prepare_files
from recsys.data.io import DataError

from helpers import write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _files(tmp_path, train_rows=None, header=("user", "item", "rating")):
    train_rows = train_rows or [(u, i, 4.0) for u in range(6) for i in range(u, u + 4)]
    tr = write_csv(tmp_path / "train.csv", list(header), train_rows)
    te = write_csv(tmp_path / "test.csv", ["user", "item"], [(u, u + 5) for u in range(6)])
    return tr, te


def _one_line(e: Exception) -> str:
    msg = str(e)
    assert "\n" not in msg and msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        prepare_files(train=str(tmp_path / "nope.csv"), test=str(tmp_path / "nope2.csv"))
    assert "nope.csv" in _one_line(e.value)


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty") as e:
        prepare_files(interactions=str(tmp_path / "empty.csv"))
    assert "empty.csv" in _one_line(e.value)
    (tmp_path / "head.csv").write_text("user,item\n")
    with pytest.raises(DataError, match="no rows"):
        prepare_files(interactions=str(tmp_path / "head.csv"))


def test_missing_or_misnamed_column(tmp_path):
    tr, te = _files(tmp_path, header=("customer", "item", "rating"))
    with pytest.raises(DataError, match="no column 'user'") as e:
        prepare_files(train=tr, test=te)
    assert "train.csv" in _one_line(e.value) and "user_col" in str(e.value)


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", ""])
def test_bad_rating_value_names_the_row(tmp_path, bad):
    rows = [(u, i, 4.0) for u in range(6) for i in range(u, u + 4)]
    rows[5] = (1, 2, bad)
    tr, te = _files(tmp_path, rows)
    with pytest.raises(DataError, match="column 'rating'") as e:
        prepare_files(train=tr, test=te)
    assert "data row 6" in _one_line(e.value)


def test_bad_timestamp(tmp_path):
    rows = [(u, i, 4.0, 1000 + i) for u in range(6) for i in range(u, u + 4)]
    rows[2] = (0, 2, 4.0, "yesterday-ish")
    tr, te = _files(tmp_path, rows, header=("user", "item", "rating", "timestamp"))
    with pytest.raises(DataError, match="column 'timestamp'") as e:
        prepare_files(train=tr, test=te)
    assert "data row 3" in _one_line(e.value)


def test_duplicate_pairs_keep_the_last_and_are_counted(tmp_path):
    rows = [(u, i, 4.0) for u in range(6) for i in range(u, u + 4)] + [(0, 0, 1.0), (0, 1, 2.0)]
    tr, te = _files(tmp_path, rows)
    prep = prepare_files(train=tr, test=te, valid_ratio=0.0)
    assert prep.report["train_duplicates_dropped"] == 2
    assert len(prep.train) == 24
    # the last row of a duplicate pair wins: (0, 0) has rating 1.0 now
    u0 = prep.users.index([0])[0]
    i0 = prep.items.index([0])[0]
    row = np.flatnonzero((prep.train[:, 0] == u0) & (prep.train[:, 1] == i0))[0]
    assert prep.train_ratings[row] == 1.0


def test_mixed_id_types():
    """(CSV and Parquet columns hold one type; a mixed object column comes from code or JSON.)"""
    from recsys.data.prepare import _clean_ids
    with pytest.raises(DataError, match="mixed types") as e:
        _clean_ids(pd.Series([1, "a", 2], dtype=object), "in.json, column 'user'")
    assert "column 'user'" in _one_line(e.value)
    with pytest.raises(DataError, match="fractional"):
        _clean_ids(pd.Series([1.0, 2.5]), "x.csv, column 'item'")


def test_missing_id(tmp_path):
    rows = [(u, i, 4.0) for u in range(6) for i in range(u, u + 4)]
    rows[3] = ("", 1, 4.0)
    tr, te = _files(tmp_path, rows)
    with pytest.raises(DataError, match="missing id in data row 4"):
        prepare_files(train=tr, test=te)


def test_items_without_text_are_counted(tmp_path):
    tr, te = _files(tmp_path)
    items = write_csv(tmp_path / "items.csv", ["item", "title"], [(i, "" if i % 3 else f"film {i}") for i in range(12)])
    prep = prepare_files(train=tr, test=te, items=items, valid_ratio=0.0)
    assert prep.report["items_without_text"] > 0


def test_not_utf8_and_the_encoding_option(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("user,item\nJosé,1\nZoë,2\nJosé,2\nZoë,3\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid utf-8") as e:
        prepare_files(interactions=str(p))
    assert "latin.csv" in _one_line(e.value)
    prep = prepare_files(interactions=str(p), encoding="latin-1", split={"kind": "random", "valid": 0.0, "test": 0.0})
    assert "José" in prep.users.ids


def test_unseen_test_users_and_items_are_reported_and_dropped(tmp_path):
    tr = write_csv(tmp_path / "train.csv", ["user", "item"], [(u, i) for u in range(4) for i in range(3)] + [(4, 3)])
    te = write_csv(tmp_path / "test.csv", ["user", "item"], [(0, 99), (77, 1), (1, 2), (0, 3)])
    prep = prepare_files(train=tr, test=te, valid_ratio=0.0)
    assert prep.report["test_rows_unknown_user"] == 1 and prep.report["test_rows_unknown_item"] == 1


def _rec(tmp_path):
    from recsys.train.build import build_memory, eval_sets
    from recsys.serve.export import save_export
    tr, te = _files(tmp_path)
    prep = prepare_files(train=tr, test=te, valid_ratio=0.0)
    model = build_memory(prep, {"kind": "popularity"})
    sets = eval_sets(prep)
    path = save_export(str(tmp_path / "export"), model, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       sets["test_seen"], torch.from_numpy(prep.bags.idf))
    return Recommender.from_pretrained(path)


def test_unknown_user_in_recommend_error_or_fallback(tmp_path):
    rec = _rec(tmp_path)
    with pytest.raises(KeyError, match="ghost"):
        rec.recommend("ghost", k=2)
    ids, sc = rec.recommend([0, "ghost"], k=2, unknown="popular")
    assert ids.shape == (2, 2)
    pop = np.bincount(rec.seen[1].numpy(), minlength=len(rec.items))
    assert sc[1].tolist() == sorted(pop, reverse=True)[:2]
    with pytest.raises(ValueError, match="unknown="):
        rec.recommend(0, k=2, unknown="guess")


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k(tmp_path, k):
    rec = _rec(tmp_path)
    with pytest.raises(ValueError, match=f"k={k}") as e:
        rec.recommend(0, k=k)
    _one_line(e.value)


def test_k_above_the_catalog_is_the_whole_allowed_list(tmp_path):
    rec = _rec(tmp_path)
    ids, sc = rec.recommend(0, k=10 ** 6)
    assert len(ids) == len(rec.recommend(0, k=len(rec.items))[0]) < len(rec.items)


def test_alpha_outside_0_1():
    from recsys.models.learned import ScorerConfig
    with pytest.raises(ValueError, match="alpha"):
        ScorerConfig(n_users=2, n_items=2, n_tokens=2, variant="hybrid", alpha=1.5)


def test_unknown_config_key_is_refused_with_a_hint():
    from hydra.errors import ConfigCompositionException
    from tests.conftest import compose_train
    with pytest.raises(ConfigCompositionException, match=r"\+model.dimension"):
        compose_train(["model.dimension=32"], "/tmp/unused")
