"""Fuzzing the service's event log (recsys/data/eventlog.py, recsys/serve/events.py) with random
lines: sound events and items records, records with fields of every JSON type (NaN and infinite
numbers, nested lists, huge integers, booleans), lines that are not JSON or not objects, and a
torn last line. The properties:

- `read_records` returns records that are all sound (ids strings or integers, finite times,
  item rows of ids and flat text fields), or raises a one-line LogError naming the file and the
  first bad line (every line before it reads);
- a service started on the log either serves (the log's events in its users' live histories)
  or refuses with that one-line error; train.py's `data.events=` reads it the same way.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recsys
from recsys.data.eventlog import LogError, read_records
from recsys.data.io import DataError
from recsys.data.prepare import prepare_files
from recsys.serve.service import Service

pytestmark = pytest.mark.filterwarnings("ignore")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from([1, 2, 3, 10, 11, 12, "1", "u"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
                      max_leaves=6)
ids = st.one_of(st.sampled_from([1, 2, 3, 7, 10, 11, 12, 13]), values)
event = st.fixed_dictionaries({"op": st.just("event"), "user": ids, "item": ids},
                              optional={"ts": st.one_of(st.floats(allow_nan=True), st.integers(), values)})
item_row = st.one_of(st.fixed_dictionaries({"item": ids}, optional={"title": values, "genres": values}), values)
items = st.fixed_dictionaries({"op": st.just("items"), "items": st.one_of(st.lists(item_row, max_size=3), values)})
record = st.one_of(event, items, st.dictionaries(st.sampled_from(["op", "user", "item", "items"]), values, max_size=4),
                   values)
line = st.one_of(record.map(lambda r: json.dumps(r).encode()),           # (NaN and Infinity as Python writes them)
                 st.binary(max_size=12).filter(lambda b: b"\n" not in b))
logs = st.tuples(st.lists(line, max_size=6), st.one_of(st.none(), st.binary(min_size=1, max_size=8)))


def _write(lines, torn) -> str:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(x + b"\n" for x in lines) + (torn.replace(b"\n", b"") if torn else b""))
    return path


def _sound(rec) -> bool:
    def id_(v):
        return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
    if rec["op"] == "event":
        ts = rec.get("ts")
        return id_(rec["user"]) and id_(rec["item"]) and (
            ts is None or (isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts)))
    return isinstance(rec["items"], list) and all(
        isinstance(r, dict) and id_(r.get("item")) and all(
            v is None or isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
            for v in r.values()) for r in rec["items"])


def _read_or_refuse(path: str, n_lines: int):
    """The read property; returns the records, or None when the log was refused."""
    try:
        recs = read_records(path)
    except LogError as e:
        msg = str(e)
        assert "\n" not in msg and path in msg, msg
        bad = int(re.search(r", line (\d+):", msg).group(1))
        assert 1 <= bad <= n_lines, msg
        with open(path, "rb") as f:                      # every line before it reads
            head = b"".join(f.readlines()[:bad - 1])
        with open(path + ".head", "wb") as f:
            f.write(head)
        assert len(read_records(path + ".head")) == bad - 1
        os.remove(path + ".head")
        return None
    assert len(recs) == n_lines
    assert all(_sound(r) for r in recs), recs
    return recs


@given(logs)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_read_records_returns_sound_records_or_names_the_first_bad_line(log):
    lines, torn = log
    path = _write(lines, torn)
    try:
        _read_or_refuse(path, len(lines))
    finally:
        os.remove(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An integer-id ItemKNN export with titles, and the train / test files of its data."""
    d = tmp_path_factory.mktemp("fuzz_events")
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3, 7, 7], "item": [10, 11, 10, 12, 11, 12, 10, 13]})
    items = pd.DataFrame({"item": [10, 11, 12, 13], "title": ["red film", "blue film", "red blue", "green"]})
    df.to_csv(d / "train.csv", index=False)
    df.iloc[:2].to_csv(d / "test.csv", index=False)
    export = recsys.fit(df, items=items, model="itemknn", k=2).save_pretrained(str(d / "export"))
    return export, str(d / "train.csv"), str(d / "test.csv")


@given(logs)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_service_and_a_retraining_take_the_log_or_refuse_it_in_one_line(served, log):
    export, train, test = served
    lines, torn = log
    path = _write(lines, torn)
    try:
        recs = _read_or_refuse(path, len(lines))
        try:
            svc = Service(export, event_log=path, scoring_process=False)
        except LogError as e:
            msg = str(e)
            assert "\n" not in msg and path in msg, msg
        else:
            try:
                assert recs is not None, "a log read_records refuses was served"
                for r in recs:
                    if r["op"] == "event" and r["item"] in svc.served.rec.items:
                        assert r["user"] in svc.served.live
            finally:
                svc.close()
        try:
            prep = prepare_files(train=train, test=test, events=path, valid_ratio=0, require_held_out=False)
        except (DataError, LogError) as e:
            assert "\n" not in str(e) and path in str(e), str(e)
        else:
            assert recs is not None and prep.n_users >= 4
    finally:
        os.remove(path)
