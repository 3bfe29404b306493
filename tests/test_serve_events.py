"""The service's parts without HTTP: the event log (durable lines, a torn tail cut, replay from a
line), live histories served as recommend_for_history, micro-batching into one call, and
train.py's data.events (recsys/serve/events.py, batcher.py, service.py, data/prepare.py)."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

import recsys
from recsys.data.io import DataError
from recsys.data.prepare import prepare_files
from recsys.serve.batcher import Batcher
from recsys.serve.events import EventLog, LogError, read_records
from recsys.serve.service import ApiError, Service
from helpers import serve_frame




@pytest.fixture(scope="module")
def export(tmp_path_factory):
    df, items = serve_frame()
    rec = recsys.fit(df, items=items, model="itemknn", k=5)
    return rec.save_pretrained(str(tmp_path_factory.mktemp("serve") / "export"))


def test_log_appends_whole_lines_and_cuts_a_torn_tail(tmp_path):
    path = str(tmp_path / "log" / "events.jsonl")
    log = EventLog(path)
    assert log.append([{"op": "event", "user": 1, "item": 2, "ts": 0}]) == 1
    assert log.append([{"op": "event", "user": "a", "item": 3, "ts": 1}] * 2) == 3
    log.close()
    with open(path, "ab") as f:                       # a crash in the middle of a write
        f.write(b'{"op":"event","us')
    assert len(read_records(path)) == 3               # a torn line is not a record
    log = EventLog(path)                              # opening cuts it off ...
    assert log.lines == 3
    log.append([{"op": "event", "user": 9, "item": 9, "ts": 2}])
    log.close()
    recs = read_records(path)                         # ... so the next record starts a clean line
    assert [r["user"] for r in recs] == [1, "a", "a", 9] and [r["user"] for r in read_records(path, 2)] == ["a", 9]


def test_a_corrupt_line_is_a_one_line_error(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"op":"event","user":1,"item":2}\nnot json\n{"op":"event","user":1,"item":2}\n')
    with pytest.raises(LogError, match="line 2: not JSON"):
        read_records(str(path))


@pytest.mark.parametrize("line,msg", [
    ('{"op":"event","user":1,"item":2,"ts":NaN}', "line 2: field 'ts' must be a finite number, got nan"),
    ('{"op":"event","user":1,"item":2,"ts":Infinity}', "line 2: field 'ts' must be a finite number"),
    ('{"op":"event","user":1}', "line 2: field 'item' must be a string or an integer id, got None"),
    ('{"op":"event","user":[1],"item":2}', "line 2: field 'user' must be a string or an integer id"),
])
def test_a_bad_event_line_is_a_one_line_error_naming_the_field(tmp_path, line, msg):
    """The log is read by the service (replay) and by train.py data.events=: an event without an
    item, or with a NaN / infinite time, is refused there, never trained on."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"op":"event","user":1,"item":2,"ts":1.5}\n' + line + "\n")
    with pytest.raises(LogError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        read_records(str(path))


def test_events_make_the_live_history_and_survive_a_restart(export, tmp_path):
    log = str(tmp_path / "events.jsonl")
    svc = Service(export, event_log=log)
    rec = svc.served.rec
    top = rec.recommend("u1", k=3)[0].tolist()
    svc.add_events([("u1", top[0], None), ("new", "m3", 5.0)])
    hist = [rec.items.ids[j] for j in rec.seen[1][rec.seen[0][1]:rec.seen[0][2]].tolist()] + [top[0]]
    assert svc.served.live.history(rec, "u1") == hist
    got = svc.score("recommend", svc.served, {"k": 3}, [(["u1", "new", "u2"], None)])[0]
    want1 = rec.recommend_for_history(hist, k=3)
    want_new = rec.recommend_for_history(["m3"], k=3)
    want2 = rec.recommend("u2", k=3)
    assert got[0]["items"] == want1[0].tolist() and top[0] not in got[0]["items"]
    assert got[1]["items"] == want_new[0].tolist() and got[2]["items"] == want2[0].tolist()
    assert got[0]["scores"] == pytest.approx(want1[1].tolist())
    again = Service(export, event_log=log)           # replayed at start
    assert again.served.live.events == {"u1": [top[0]], "new": ["m3"]} and again.served.lines == 2
    with pytest.raises(ApiError) as e:
        svc.add_events([("u1", "nope", None)])
    assert e.value.status == 404 and e.value.field == "events[0].item"
    for bad in (float("nan"), float("inf"), -float("inf"), True):   # finite seconds only
        with pytest.raises(ApiError) as e:
            svc.add_events([("u1", "m3", 5.0), ("u1", "m3", bad)])
        assert e.value.status == 400 and e.value.field == "events[1].ts"
    assert len(read_records(log)) == 2               # a refused batch writes nothing


def test_reload_reapplies_only_the_lines_after_events_through(export, tmp_path):
    """An export trained on the first n log lines (meta["events_through"] = n) gets only the
    later events; items added through the API are re-added whenever the catalog lacks them."""
    log = str(tmp_path / "events.jsonl")
    svc = Service(export, event_log=log)
    svc.add_events([("u1", "m3", None)])
    svc.add_items([{"item": "m99", "title": "film 99 red"}])
    svc.add_events([("u2", "m99", None)])
    from recsys import Recommender
    rec = Recommender.from_pretrained(export)
    rec.meta["events_through"] = 1
    trained = rec.save_pretrained(str(tmp_path / "export2"))
    info = svc.reload(trained)
    assert info["events_through"] == 1 and info["log_lines"] == 3
    assert svc.served.live.events == {"u2": ["m99"]} and "m99" in svc.served.rec.items


def test_concurrent_requests_become_one_call():
    calls = []

    def run(key, payloads):
        calls.append((key, [p for p in payloads]))
        return [p * 10 for p in payloads]

    async def main():
        b = Batcher(run, max_wait_s=0.05, max_rows=64)
        b.start()
        out = await asyncio.gather(*[b.submit("same", n) for n in range(8)], b.submit("other", 100))
        await b.stop()
        return out

    out = asyncio.run(main())
    assert out == [n * 10 for n in range(8)] + [1000]
    assert sorted(len(p) for _, p in calls) == [1, 8]  # one call per option signature


def test_batching_off_runs_each_request_alone():
    calls = []

    async def main():
        b = Batcher(lambda key, ps: calls.append(ps) or ps, max_wait_s=0.05, max_rows=1)
        b.start()
        await asyncio.gather(*[b.submit("k", n) for n in range(4)])
        await b.stop()

    asyncio.run(main())
    assert [len(c) for c in calls] == [1, 1, 1, 1]


def test_a_bad_request_in_a_batch_fails_alone(export):
    svc = Service(export)
    res = svc.score("recommend", svc.served, {"k": 2}, [(["u1"], None), (["u2"], [["nope"]]), (["u3"], None)])
    assert isinstance(res[1], ApiError) and res[1].status == 404 and res[1].field == "exclude"
    assert res[0][0]["items"] == svc.served.rec.recommend("u1", k=2)[0].tolist()
    assert res[2][0]["items"] == svc.served.rec.recommend("u3", k=2)[0].tolist()


def test_ids_keep_their_type_through_events_and_retraining(tmp_path):
    """One id type per catalog: an integer-id model refuses an event of user "newbie" (400
    naming the field; before, a retraining on the log turned every id into a string and a later
    event for 5 made a second user beside "5"), maps "5" to 5, and a log that already holds a
    string id is refused by the retraining, naming the line."""
    import pandas as pd
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3, 5, 5], "item": [10, 11, 10, 12, 11, 12, 10, 13],
                       "timestamp": range(8)})
    path = recsys.fit(df, model="popularity").save_pretrained(str(tmp_path / "exp"))
    log = str(tmp_path / "events.jsonl")
    svc = Service(path, event_log=log)
    with pytest.raises(ApiError) as e:
        svc.add_events([(5, 11, None), ("newbie", 11, None)])
    assert e.value.status == 400 and e.value.field == "events[1].user" and "not an integer id" in e.value.message
    svc.add_events([("5", 11, None), (7, 12, None)])
    assert [r["user"] for r in read_records(log)] == [5, 7]              # 5 is the known user 5
    df.to_csv(tmp_path / "train.csv", index=False)
    df.iloc[:2].to_csv(tmp_path / "test.csv", index=False)
    prep = prepare_files(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), events=log,
                         valid_ratio=0, require_held_out=False)
    assert prep.users.ids == [1, 2, 3, 5, 7]                             # integers still, one user 5
    with open(log, "a") as f:
        f.write('{"op":"event","user":"newbie","item":10,"ts":9}\n')
    with pytest.raises(DataError, match=r"events.jsonl, line 3: user 'newbie' is not an integer id"):
        prepare_files(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), events=log,
                      valid_ratio=0, require_held_out=False)


def test_train_data_events_appends_the_logged_interactions(tmp_path):
    """Known answer: the log's event pairs are in train (a new user and a new item included),
    the number of log lines is events_through, items records are not interactions."""
    df, _ = serve_frame(1)
    df.to_csv(tmp_path / "x.csv", index=False)
    with open(tmp_path / "ev.jsonl", "w") as f:
        for r in ({"op": "event", "user": "u1", "item": "m5", "ts": 1.0},
                  {"op": "items", "items": [{"item": "m77", "title": "t"}]},
                  {"op": "event", "user": "zed", "item": "m77", "ts": 2.0}):
            f.write(json.dumps(r) + "\n")
    kw = dict(split={"kind": "random", "valid": 0.0, "test": 0.2, "seed": 0}, require_held_out=False)
    base = prepare_files(str(tmp_path / "x.csv"), **kw)
    prep = prepare_files(str(tmp_path / "x.csv"), events=str(tmp_path / "ev.jsonl"), **kw)
    pairs = {(prep.users.ids[u], prep.items.ids[i]) for u, i in prep.train}
    assert {("u1", "m5"), ("zed", "m77")} <= pairs
    assert prep.events_through == 3 and prep.report["events_used"] == 2
    assert len(pairs) - len(base.train) == 2 - (("u1", "m5") in {(base.users.ids[u], base.items.ids[i])
                                                                  for u, i in base.train})
    with pytest.raises(DataError, match="data.events"):
        prepare_files(str(tmp_path / "x.csv"), events=str(tmp_path / "missing.jsonl"), **kw)


def test_result_rows_are_plain_json_values_without_padding():
    """rows.result_rows: numeric ids come back as Python ints, object ids as their plain values,
    scores as Python floats of the float32 scores, NaN padding (a short row of a batch) left out;
    http.dumps writes them (and numpy scalars) as compact JSON."""
    import numpy as np

    from recsys.serve.http import dumps
    from recsys.serve.rows import result_rows
    ids = np.array([[7, 3, 5], [2, -1, -1]], dtype=np.int64)
    sc = np.array([[0.5, 0.25, 0.1], [0.75, np.nan, np.nan]], dtype=np.float32)
    rows = list(result_rows((ids, sc)))
    assert rows == [{"items": [7, 3, 5], "scores": [0.5, 0.25, float(np.float32(0.1))]},
                    {"items": [2], "scores": [0.75]}]
    assert all(type(x) is int for r in rows for x in r["items"])
    assert all(type(x) is float for r in rows for x in r["scores"])
    obj = np.array([["a", np.int64(4)], [None, None]], dtype=object)
    rows = list(result_rows((obj, np.array([[1.0, 2.0], [np.nan, np.nan]], dtype=np.float32))))
    assert rows == [{"items": ["a", 4], "scores": [1.0, 2.0]}, {"items": [], "scores": []}]
    assert type(rows[0]["items"][1]) is int
    assert dumps({"a": rows[0], "n": np.float32(1.5), "v": np.arange(2)}) == \
        b'{"a":{"items":["a",4],"scores":[1.0,2.0]},"n":1.5,"v":[0,1]}'


def _answers(svc):
    """One answer of every scoring kind, a user with events and an API item included."""
    s = svc.served
    return [svc.score("recommend", s, {"k": 4}, [(["u1", "u2", "fresh"], None), (["u3"], [["m1", "m2"]])]),
            svc.score("history", s, {"k": 3, "unknown": "ignore"}, [([["m99", "m1"], ["m2"]], None)]),
            svc.score("similar_items", s, {"k": 3, "candidates": ["m99", "m2", "m3", "m4"]}, [(["m1"], None)]),
            svc.score("similar_users", s, {"k": 2}, [(["u1", "u4"], None)]),
            svc.score("recommend", s, {"k": 2}, [(["u1"], None), (["u2"], [["nope"]])])]


def test_a_scoring_process_answers_as_the_server_process(export, tmp_path):
    """scoring_process=True: the same answers (live histories and API items included), the
    errors of a bad request in a batch as 4xx, a new child on reload (the old one stops), and
    answers from the server's own copy once the child is gone, until a new child is started."""
    import os
    import signal
    here = Service(export, event_log=str(tmp_path / "a.jsonl"))
    there = Service(export, event_log=str(tmp_path / "b.jsonl"), scoring_process=True)
    try:
        child = there.served.scorer
        assert child.alive and child.pid != os.getpid()
        for svc in (here, there):
            svc.add_items([{"item": "m99", "title": "film 99 red"}])
            svc.add_events([("u1", "m99", None), ("fresh", "m3", None)])
        want, got = _answers(here), _answers(there)
        assert isinstance(got[4][1], ApiError) and got[4][1].status == 404 and got[4][1].field == "exclude"
        assert got[:4] == want[:4] and got[4][0] == want[4][0]
        from recsys.serve.http import dumps                     # explanations: the same JSON answer
        ask = ("recommend", {"k": 3, "explain": True}, [(["u2", "u1"], None)])
        assert dumps(there.score(ask[0], there.served, *ask[1:])) == dumps(here.score(ask[0], here.served, *ask[1:]))
        # the child's catalog holds the API item: a history naming it is not refused as unknown
        assert there.served.scorer.call("rows", "history", {"k": 2}, [["m99", "m1"]], None, None)[0]["items"] == \
            here.served.rec.recommend_for_history(["m99", "m1"], k=2)[0].tolist()
        there.reload()
        assert there.served.scorer is not child and there.served.scorer.alive
        assert child.proc.wait(10) == 0 and not child.alive
        assert _answers(there)[:4] == want[:4]                  # replayed log: same items, same live users
        dead = there.served.scorer
        os.kill(dead.pid, signal.SIGKILL)
        dead.proc.wait(10)
        assert _answers(there)[:4] == want[:4]                  # scored here meanwhile
        deadline = time.time() + 60
        while there.served.scorer is dead and time.time() < deadline:
            time.sleep(0.1)
        new = there.served.scorer                               # started again, API item included
        assert new is not dead and new.alive and there.respawns == 1
        assert _answers(there)[:4] == want[:4]
        assert new.call("rows", "history", {"k": 2}, [["m99", "m1"]], None, None)[0]["items"] == \
            here.served.rec.recommend_for_history(["m99", "m1"], k=2)[0].tolist()
    finally:
        there.close()


def test_a_scoring_process_that_cannot_load_is_a_one_line_error(tmp_path):
    from recsys.serve.scorer import ScorerGone, ScoringProcess
    p = ScoringProcess(str(tmp_path / "missing"))
    with pytest.raises(ScorerGone, match="could not load the export: .*missing"):
        p.wait_ready(60)
    assert p.proc.wait(10) == 0


def test_calls_waiting_together_in_the_scoring_process_answer_as_alone(export):
    """The child scores "rows" calls of one kind and options that wait in its pipe as one call:
    every caller still gets its own call's answer, and a bad request fails alone."""
    from concurrent.futures import ThreadPoolExecutor
    svc = Service(export, scoring_process=True)
    try:
        rec, child = svc.served.rec, svc.served.scorer
        calls = [(["u1", "u2"], None, {}), (["u3"], [["m1"]], {}), (["u4"], None, {0: ["m1", "m2"]}),
                 (["u5"], [["nope"]], {}), (["u6", "u7"], [["m2"], []], {})] * 6
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda c: _call(child, c), calls))
        for (users, exclude, hist), g in zip(calls, got):
            if exclude == [["nope"]]:
                assert isinstance(g, KeyError)
                continue
            for n, (u, row) in enumerate(zip(users, g)):
                ex_n = exclude[n] if exclude else None
                want = (rec.recommend_for_history(hist[n], k=3, exclude=ex_n, unknown="ignore") if n in hist
                        else rec.recommend(u, k=3, exclude=ex_n))
                assert row["user"] == u and row["items"] == want[0].tolist()
                assert row["scores"] == pytest.approx(want[1].tolist())
    finally:
        svc.close()


def _call(child, c):
    users, exclude, hist = c
    try:
        return child.call("rows", "recommend", {"k": 3}, users, exclude, hist)
    except KeyError as e:
        return e


def test_scoring_threads_follow_what_a_user_costs(export, monkeypatch):
    """auto: one thread for light models, two where a user costs >= 0.25 ms (and 2+ CPUs); the
    child reports its choice and the cost it measured."""
    from recsys.serve import scorer
    monkeypatch.setattr(scorer.os, "cpu_count", lambda: 2)
    assert scorer.auto_threads(0.0001) == 1 and scorer.auto_threads(0.0005) == 2
    monkeypatch.setattr(scorer.os, "cpu_count", lambda: 1)
    assert scorer.auto_threads(0.0005) == 1
    svc = Service(export, scoring_process=True, scoring_threads=2)
    try:
        assert svc.served.scorer.info["threads"] == 2 and svc.served.scorer.info["us_per_user"] > 0
    finally:
        svc.close()


def test_serve_refuses_a_bad_scoring_threads_setting():
    pytest.importorskip("fastapi")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "serve.py", "export=/nonexistent", "scoring_threads=-1"],
                       capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert r.returncode != 0 and "scoring_threads=-1 must be 'auto' or a positive integer" in r.stderr


def test_create_app_defaults_are_the_served_config():
    """A Python caller of create_app gets configs/serve.yaml's measured settings (the event log
    aside: the library writes no file unless asked)."""
    pytest.importorskip("fastapi")
    import inspect
    import pathlib

    import yaml

    from recsys.serve.http import create_app
    cfg = yaml.safe_load((pathlib.Path(__file__).parents[1] / "configs" / "serve.yaml").read_text())
    cfg["scoring_threads"] = 0 if cfg["scoring_threads"] == "auto" else cfg["scoring_threads"]
    params = inspect.signature(create_app).parameters
    shared = [k for k in params if k in cfg and k != "event_log"]
    assert len(shared) >= 12
    assert {k: params[k].default for k in shared} == {k: cfg[k] for k in shared}
