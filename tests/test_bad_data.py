"""Data files and ids (docs/bad_input.md, "Data files and ids"): one id rule from the files to
the stored split, evaluate.py and Recommender.add_items; and the data-side refusals - a
threshold that removes every row, a directory for a file, held-out parts left empty - each
one line naming the file, column or argument."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.data.ids import clean_ids, conform_ids
from recsys.data.io import DataError
from recsys.data.prepare import prepare_files, read_interactions

from helpers import write_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _one_line(e: Exception) -> str:
    msg = str(e)
    assert msg and "\n" not in msg
    return msg


def _named_ids(n_users: int = 60, n_items: int = 30) -> pd.DataFrame:
    """Users "1".."60" with 8 of the items "1".."30" each, plus "bob" with the one item "x":
    the id rule makes every id a string, while the held-out parts (bob's only row stays in
    train) hold numeric-looking strings only."""
    rng = np.random.default_rng(0)
    rows = [(str(u), str(i + 1)) for u in range(1, n_users + 1) for i in rng.choice(n_items, 8, replace=False)]
    return pd.DataFrame(rows + [("bob", "x")], columns=["user", "item"])


# ---------------------------------------------------------------------------------------------
# the id rule


def test_numeric_looking_ids_with_one_name_are_all_strings(tmp_path):
    p = str(tmp_path / "inter.csv")
    _named_ids().to_csv(p, index=False)
    prep = prepare_files(interactions=p)
    assert prep.n_users == 61 and all(isinstance(u, str) for u in prep.users.ids)
    assert "bob" not in prep.split_frame("test")["user"].tolist()
    assert "1" in prep.users and 1 not in prep.users and "bob" in prep.users
    assert all(isinstance(i, str) for i in prep.items.ids)


def test_all_plain_integer_ids_are_integers(tmp_path):
    p = write_csv(tmp_path / "inter.csv", ["user", "item"],
                  [(u, i) for u in range(-3, 7) for i in (0, 5, 9, 10 ** 17, u + 20, u + 21)])
    prep = prepare_files(interactions=p)
    assert all(type(u) is int for u in prep.users.ids) and -3 in prep.users
    assert 10 ** 17 in prep.items


def test_one_rule_over_train_and_test_files(tmp_path):
    """"bob" only in the train file makes the user column strings in every file: the test file's
    "1".."60" are the same users, not integers that match nobody."""
    df = _named_ids()
    test = df.sample(frac=1.0, random_state=0).groupby("user").head(1)
    tr = str(tmp_path / "train.csv")
    te = str(tmp_path / "test.csv")
    df.drop(test.index).to_csv(tr, index=False)
    test[test["user"] != "bob"].to_csv(te, index=False)
    prep = prepare_files(train=tr, test=te, valid_ratio=0.0)
    assert "test_rows_unknown_user" not in prep.report
    assert len(prep.test) + prep.report.get("test_rows_unknown_item", 0) == 60 and len(prep.test) > 50


def test_leading_zeros_keep_distinct_ids(tmp_path):
    """49 distinct id strings, "1".."40" and "001".."009", are 49 items, not 40."""
    ids = [str(i) for i in range(1, 41)] + [f"{i:03d}" for i in range(1, 10)]
    p = write_csv(tmp_path / "inter.csv", ["user", "item"], [(f"u{u}", i) for u in range(5) for i in ids])
    prep = prepare_files(interactions=p)
    assert prep.n_items == 49
    assert {"001", "1"} <= set(prep.items.ids)
    assert "interactions_duplicates_dropped" not in prep.report


def test_ids_differing_by_whitespace_are_one_id_with_a_warning(tmp_path, caplog):
    """" 7" and "7" (and "8 " and "8") are one id each; a warning names the column and examples."""
    p = tmp_path / "inter.csv"
    p.write_text("user,item\n" + "".join(f"u{u},{i}\n" for u in range(6) for i in range(1, 7))
                 + "u0, 7\nu1,7\nu2,8 \nu3,8\n")
    with caplog.at_level(logging.WARNING, logger="recsys.data.ids"):
        prep = prepare_files(interactions=str(p))
    assert prep.n_items == 8 and 7 in prep.items and 8 in prep.items
    msg = [r.getMessage() for r in caplog.records if r.name == "recsys.data.ids"]
    assert len(msg) == 1 and "column 'item'" in msg[0] and "' 7' = '7'" in msg[0] and "'8 ' = '8'" in msg[0]


def test_blank_id_is_a_missing_id(tmp_path):
    p = tmp_path / "inter.csv"
    p.write_text("user,item\nu1,1\n  ,2\n")
    with pytest.raises(DataError, match=r"column 'user': missing id in data row 2") as e:
        prepare_files(interactions=str(p))
    _one_line(e.value)


def test_rule_over_parquet_and_csv_together(tmp_path):
    """A Parquet integer column and a CSV text column share one rule: 7 and "7" are one user."""
    tr = str(tmp_path / "train.parquet")
    pd.DataFrame({"user": np.repeat(np.arange(1, 9), 6), "item": np.tile(np.arange(6), 8)}).to_parquet(tr)
    te = write_csv(tmp_path / "test.csv", ["user", "item"], [(u, 6) for u in range(1, 9)])
    items = write_csv(tmp_path / "items.csv", ["item", "t"], [(i, f"w{i}") for i in range(7)])
    prep = prepare_files(train=tr, test=te, items=items, valid_ratio=0.0)
    assert len(prep.test) == 8 and prep.users.ids == list(range(1, 9))


@pytest.mark.parametrize("column, kind", [(["1", "60", "bob"], str), (["1", "-60", "0"], int),
                                          (["1", "+2"], str), (["1", "-0"], str), (["1", "١"], str),
                                          (["9223372036854775807"], int), (["9223372036854775808"], str)])
def test_plain_integer_means_ascii_digits_no_sign_tricks_within_int64(column, kind):
    ids = clean_ids([pd.Series(column)], ["f.csv, column 'user'"])[0].tolist()
    assert all(type(i) is kind for i in ids) and [str(i) for i in ids] == column


def test_whitespace_is_pythons():
    """The stripped characters are exactly those of Python's str.isspace, found alike in Arrow
    and Python string columns (an id padded with U+3000 or U+001C is that id)."""
    import sys
    from recsys.data.ids import WHITESPACE
    assert WHITESPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    raw = ["\u3000a", "a", "b\x1c", "b", "c\u200b"]       # U+200B (zero width) is not whitespace
    for dtype in ("str", "string[python]", object):
        ids = clean_ids([pd.Series(raw, dtype=dtype)], ["f.csv, column 'item'"])[0].tolist()
        assert ids == ["a", "a", "b", "b", "c\u200b"], dtype


def test_conform_follows_the_vocabulary_kind():
    s = pd.Series(["1", " 2", "bob"])
    assert conform_ids(s, "w", [1, 2]).tolist() == [1, 2, "bob"]
    assert conform_ids(s, "w", ["1", "2"]).tolist() == ["1", "2", "bob"]
    with pytest.raises(DataError, match=r"ids \['bob'\] are not integers") as e:
        conform_ids(s, "add_items, column 'item'", [1, 2], strict=True)
    assert "column 'item'" in _one_line(e.value)


def test_id_rule_loads_without_the_preparation_code():
    """recsys.data.ids (used by the serving path) does not import recsys.data.prepare."""
    code = ("import sys, recsys.data.ids, recsys.serve.recommender; "
            "print('recsys.data.prepare' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# the stored split, evaluate.py and add_items follow the rule


def test_run_split_and_evaluate_py_agree_on_string_ids(tmp_path):
    """train.py writes split/test.csv with ids "1".."60" and "bob"; evaluate.py reads them back
    as the same string ids: every test pair used, the run's own test NDCG@10."""
    import train
    import evaluate
    from omegaconf import OmegaConf
    from tests.conftest import compose_train
    p = str(tmp_path / "inter.csv")
    _named_ids().to_csv(p, index=False)
    out = str(tmp_path / "run")
    cfg = compose_train(["data=csv", f"data.interactions={p}", "model=itemknn", "trainer.accelerator=cpu"], out)
    metrics = train.run(cfg)
    stored = pd.read_csv(os.path.join(out, "split", "test.csv"), dtype=str)
    assert "bob" not in set(stored["user"]) and "x" not in set(stored["item"])
    ecfg = OmegaConf.load(os.path.join(ROOT, "configs", "evaluate.yaml"))
    del ecfg["hydra"]
    ecfg.run_dir = out
    ecfg.out = str(tmp_path / "again.json")
    again = evaluate.run(ecfg)
    report = json.loads((tmp_path / "again.json").read_text())["report"]
    assert report["pairs_used"] == len(stored) == metrics["data"]["n_test"]
    assert again["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-9)


def test_evaluate_py_refuses_a_test_file_with_no_usable_pair(tmp_path):
    import evaluate
    from omegaconf import OmegaConf
    rec_dir = _export(tmp_path, ids=int)
    te = write_csv(tmp_path / "other.csv", ["user", "item"], [("ghost", 1), ("nobody", 2)])
    cfg = OmegaConf.create({"compare": None, "device": "cpu", "export": rec_dir, "test": te, "user_col": "user",
                            "item_col": "item", "ks": [10], "chunk": 64, "out": None})
    with pytest.raises(DataError, match=r"other.csv: none of its 2 \(user, item\) pairs can be evaluated "
                                        r"\(2 unknown users") as e:
        evaluate.run(cfg)
    _one_line(e.value)


def _export(tmp_path, ids=int) -> str:
    """An export of a content KNN model over 6 users and 10 items with integer ids, or with the
    same ids as strings (an eleventh item "x" makes the item column strings)."""
    from recsys.train.build import build_memory, csr
    from recsys.serve.export import save_export
    f = (lambda x: x) if ids is int else str
    os.makedirs(tmp_path, exist_ok=True)
    rows = [(f(u), f(i)) for u in range(6) for i in range(10) if (i + u) % 3 == 0]
    tr = write_csv(tmp_path / "train.csv", ["user", "item"], rows)
    te = write_csv(tmp_path / "test.csv", ["user", "item"], [(f(u), f((u + 1) % 10)) for u in range(6)])
    items = [(f(i), f"film {i} {'ab'[i % 2]}") for i in range(10)] + ([] if ids is int else [("x", "film x a")])
    items = write_csv(tmp_path / "items.csv", ["item", "title"], items)      # "x": string ids
    prep = prepare_files(train=tr, test=te, items=items, valid_ratio=0.0)
    model = build_memory(prep, {"kind": "content_knn", "k": 3})
    return save_export(str(tmp_path / "export"), model, prep.users, prep.items, prep.tokens, prep.tokenizer,
                       csr(prep.train, prep.n_users), torch.from_numpy(prep.bags.idf), prep.item_titles,
                       meta={"text_fields": prep.text_fields})


def test_add_items_follows_the_catalogs_id_kind(tmp_path):
    """An integer catalog: "1" is the item 1 (refused, already there), "bob" is refused, "77"
    becomes the integer 77. A string catalog: the integer 5 is the string "5"."""
    from recsys import Recommender
    rec = Recommender.from_pretrained(_export(tmp_path / "a", ids=int))
    n = len(rec.items)
    with pytest.raises(ValueError, match=r"already in the catalog"):
        rec.add_items(pd.DataFrame({"item": ["1"], "title": ["new film a"]}))
    with pytest.raises(DataError, match=r"add_items, column 'item': ids \['bob'\] are not integers") as e:
        rec.add_items(pd.DataFrame({"item": ["bob"], "title": ["new film a"]}))
    _one_line(e.value)
    assert len(rec.items) == n
    assert rec.add_items(pd.DataFrame({"item": ["77"], "title": ["new film a"]})) == 1
    assert rec.items.ids[-1] == 77 and type(rec.items.ids[-1]) is int and "77" not in rec.items

    rec = Recommender.from_pretrained(_export(tmp_path / "b", ids=str))
    with pytest.raises(ValueError, match=r"already in the catalog"):
        rec.add_items(pd.DataFrame({"item": [5], "title": ["new film a"]}))
    assert rec.add_items(pd.DataFrame({"item": [55], "title": ["new film a"]})) == 1
    assert rec.items.ids[-1] == "55"


# ---------------------------------------------------------------------------------------------
# refusals


def test_min_rating_that_removes_every_row(tmp_path):
    rows = [(u, i, 3.0) for u in range(5) for i in range(5)]
    p = write_csv(tmp_path / "r.csv", ["user", "item", "rating"], rows)
    with pytest.raises(DataError, match=r"^no interactions left after min_rating=100 in .*r\.csv$") as e:
        prepare_files(interactions=p, min_rating=100)
    _one_line(e.value)
    t = write_csv(tmp_path / "t.csv", ["user", "item", "rating"], [(u, 9, 5.0) for u in range(5)])
    with pytest.raises(DataError, match=r"min_rating=100 in .*r\.csv"):
        prepare_files(train=p, test=t, min_rating=100)
    with pytest.raises(DataError, match=r"min_rating=4 in .*r\.csv"):      # only the train file empties
        prepare_files(train=p, test=t, min_rating=4)


def test_empty_frame_splits_to_nothing():
    from recsys.data.splits import random_split
    assert len(random_split(pd.DataFrame({"user": [], "item": []}))) == 0


@pytest.mark.parametrize("arg", ["interactions", "train", "test", "valid", "items"])
def test_directory_for_a_data_file(tmp_path, arg):
    tr = write_csv(tmp_path / "tr.csv", ["user", "item"], [(u, i) for u in range(4) for i in range(5)])
    kw = {"train": tr, "test": tr} if arg != "interactions" else {}
    kw[arg] = str(tmp_path)
    with pytest.raises(DataError, match=rf"^data\.{arg}=.* is a directory; give a CSV or Parquet file$") as e:
        prepare_files(**kw)
    _one_line(e.value)


def test_directory_for_the_test_file_of_evaluate_py(tmp_path):
    with pytest.raises(DataError, match=r"^test=.* is a directory"):
        read_interactions(str(tmp_path), raw_ids=True, what="test", arg="test")


def _train_test(tmp_path, train_rows, test_rows):
    return (write_csv(tmp_path / "train.csv", ["user", "item"], train_rows),
            write_csv(tmp_path / "test.csv", ["user", "item"], test_rows))


def test_no_test_pairs_left_all_users_unknown(tmp_path):
    tr, te = _train_test(tmp_path, [(u, i) for u in range(4) for i in range(6)], [(9, 1), (8, 2), (7, 3)])
    with pytest.raises(DataError, match=r"^no test pairs left from .*test\.csv \(all 3 rows dropped: 3 of users "
                                        r"with no training interaction\); every model needs test pairs$") as e:
        prepare_files(train=tr, test=te, valid_ratio=0.0)
    _one_line(e.value)


def test_no_test_pairs_left_all_already_seen(tmp_path):
    tr, te = _train_test(tmp_path, [(u, i) for u in range(4) for i in range(6)], [(0, 1), (1, 2)])
    with pytest.raises(DataError, match=r"all 2 rows dropped: 2 already in train or valid"):
        prepare_files(train=tr, test=te, valid_ratio=0.0)


def test_no_validation_pairs_with_one_interaction_per_user(tmp_path):
    """A per-user valid_ratio of a train file with one row per user holds nothing out."""
    tr, te = _train_test(tmp_path, [(u, u) for u in range(10)], [(u, u + 1) for u in range(9)])
    with pytest.raises(DataError, match=r"^no validation pairs left from data\.valid_ratio=0\.1 of .*train\.csv "
                                        r"\(no rows held out: users have too few interactions for it\)") as e:
        prepare_files(train=tr, test=te)
    _one_line(e.value)
    assert len(prepare_files(train=tr, test=te, valid_ratio=0.0).valid) == 0      # no validation asked


def test_no_pairs_from_a_split_of_one_interaction_per_user(tmp_path):
    p = write_csv(tmp_path / "inter.csv", ["user", "item", "timestamp"], [(u, u, u) for u in range(10)])
    with pytest.raises(DataError, match=r"no test pairs left from data\.split\.test=0\.1 of .*inter\.csv"):
        prepare_files(interactions=p)
    with pytest.raises(DataError, match=r"no validation pairs left from data\.split\.valid=1 of"):
        prepare_files(interactions=p, split={"kind": "leave_last", "test": 0})


def test_empty_held_out_parts_allowed_when_asked_not_to_check(tmp_path):
    tr, te = _train_test(tmp_path, [(u, i) for u in range(4) for i in range(6)], [(0, 1)])
    prep = prepare_files(train=tr, test=te, require_held_out=False)
    assert len(prep.test) == 0 and prep.report["test_rows_already_seen"] == 1


@pytest.mark.parametrize("model", ["ease", "hybrid"])
def test_cli_fails_before_training_when_validation_is_empty(tmp_path, model):
    """One interaction per user in train: `train.py model=ease` used to exit 0 with empty
    validation metrics and an export; now it stops with the one-line error and writes no export."""
    tr, te = _train_test(tmp_path, [(f"u{u}", f"i{u}") for u in range(10)], [(f"u{u}", f"i{u + 1}") for u in range(9)])
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"model={model}", "data=csv", f"data.train={tr}", f"data.test={te}",
           "debug=fast", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode != 0
    assert "no validation pairs left from data.valid_ratio=0.1 of" in res.stdout + res.stderr
    assert not (run_dir / "export").exists() and not (run_dir / "metrics.json").exists()


def test_large_csv_reads_like_the_c_engine(tmp_path, monkeypatch):
    """Files past ARROW_CSV_BYTES are parsed by pyarrow: the same frame as the C engine (text ids,
    only empty cells missing, quoted commas and newlines, CRLF), and a file pyarrow refuses
    falls back to the C engine's reading."""
    import pandas as pd

    from recsys.data import io
    text = 'user,item,title\r\n1,NA,"a, b"\r\n2,nan,NULL\r\n 3 ,007,\r\n4,x,"multi\nline"\r\n'
    path = tmp_path / "s.csv"
    path.write_text(text)
    small = io.read_table(str(path), "interactions", id_cols=("user", "item"))
    monkeypatch.setattr(io, "ARROW_CSV_BYTES", 1)
    big = io.read_table(str(path), "interactions", id_cols=("user", "item"))
    assert big.equals(small) and small["item"].tolist() == ["NA", "nan", "007", "x"]
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("user,item\n1,2\n3,4,5,6\n")
    with pytest.raises(io.DataError, match="cannot read interactions file"):
        io.read_table(str(ragged), "interactions")
    assert isinstance(small, pd.DataFrame)
