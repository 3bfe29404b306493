"""The HTTP service against a real server: `python serve.py` in a subprocess on a free
127.0.0.1 port, spoken to over HTTP (httpx). Answers equal direct Recommender calls; errors are
4xx JSON naming the field; an event changes the next answer; kill -9 after an acknowledged event
loses nothing; a reload under concurrent load fails no request and mixes no two models."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import recsys  # noqa: E402
from recsys import Recommender  # noqa: E402
from helpers import serve_frame  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}




@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of the same users and items: ItemKNN (A) and popularity (B)."""
    df, items = serve_frame()
    d = tmp_path_factory.mktemp("serve_http")
    a = recsys.fit(df, items=items, model="itemknn", k=5).save_pretrained(str(d / "a"))
    b = recsys.fit(df, items=items, model="popularity").save_pretrained(str(d / "b"))
    return a, b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, export, log, *extra, token=TOKEN):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RECSYS_SERVE_TOKEN=token or "")
        self.out = open(f"{log}.{self.port}.out", "w+")
        self.proc = subprocess.Popen([sys.executable, "serve.py", f"export={export}", f"port={self.port}",
                                      f"event_log={log}", "log_level=warning", *extra],
                                     cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while True:
            if self.proc.poll() is not None:
                self.out.seek(0)
                pytest.fail(f"server exited {self.proc.returncode}: {self.out.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                pytest.fail("server not ready within 90 s")
            time.sleep(0.2)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def post(self, path, json=None, **kw):
        return self.client.post(path, json=json, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    s = Server(exports[0], str(tmp_path_factory.mktemp("log") / "events.jsonl"))
    yield s
    s.stop()


def _lists(ids, scores):
    return [x.item() if hasattr(x, "item") else x for x in ids], [float(x) for x in scores]


def test_answers_equal_direct_calls(server, exports):
    rec = Recommender.from_pretrained(exports[0])
    r = server.post("/recommend", {"users": ["u1", "u2"], "k": 4, "exclude": ["m3"]})
    assert r.status_code == 200
    ids, sc = rec.recommend(["u1", "u2"], k=4, exclude=["m3"])
    for row, i, s in zip(r.json()["results"], ids, sc):
        ok = ~np.isnan(s)
        assert row["items"] == list(i[ok]) and row["scores"] == pytest.approx(s[ok].tolist())
    one = server.post("/recommend", {"users": "u4", "k": 3, "where": {"title": "red"}}).json()["results"][0]
    want = rec.recommend("u4", k=3, where={"title": "red"})
    assert one["items"] == _lists(*want)[0] and one["scores"] == pytest.approx(_lists(*want)[1])
    h = server.post("/recommend/history", {"history": ["m1", "m2"], "k": 3, "candidates": ["m4", "m5", "m6"]})
    assert h.json()["results"][0]["items"] == rec.recommend_for_history(["m1", "m2"], k=3,
                                                                        candidates=["m4", "m5", "m6"])[0].tolist()
    si = server.post("/similar/items", {"items": ["m1"], "k": 3}).json()["results"][0]
    assert si["item"] == "m1" and si["items"] == rec.similar_items("m1", k=3)[0].tolist()
    su = server.post("/similar/users", {"users": "u1", "k": 2}).json()["results"][0]
    assert su["users"] == rec.similar_users("u1", k=2)[0].tolist()
    su = server.post("/similar/users", {"users": "u1", "k": 2, "candidates": ["u3", "u5", "u7"]}).json()["results"][0]
    assert su["users"] == rec.similar_users("u1", k=2, candidates=["u3", "u5", "u7"])[0].tolist()
    r = server.post("/recommend", {"users": ["u1"], "k": 2, "candidates": ["m4", "m5", "m6"]}).json()["results"][0]
    assert r["items"] == rec.recommend("u1", k=2, candidates=["m4", "m5", "m6"])[0].tolist()
    it = server.client.get("/items/m3").json()
    assert it["title"] == "film 3 red" and it["attributes"] == {"title": "film 3 red"}


@pytest.mark.parametrize("path,body,status,field", [
    ("/recommend", {"users": ["nobody"]}, 404, "users"),
    ("/recommend", {"users": ["u1"], "k": 0}, 400, "k"),
    ("/recommend", {"users": ["u1"], "k": 10 ** 6}, 400, "k"),
    ("/recommend", {"users": ["u1"], "k": "ten"}, 400, "k"),
    ("/recommend", {"users": ["u1"], "colour": 1}, 400, "colour"),
    ("/recommend", {"users": []}, 400, "users"),
    ("/recommend", {"users": ["u1"], "items": ["zzz"]}, 404, "items"),
    ("/recommend", {"users": ["u1"], "candidates": ["zzz"]}, 404, "candidates"),
    ("/recommend", {"users": ["u1"], "candidates": ["m1"], "items": ["m1"]}, 400, "items"),
    ("/similar/users", {"users": ["u1"], "candidates": ["nobody"]}, 404, "candidates"),
    ("/recommend", {"users": ["u1"], "where": {"genre": "x"}}, 400, "where"),
    ("/recommend", {"users": ["u1", "u2"], "exclude": [["m1"]]}, 400, "exclude"),
    ("/recommend/history", {"history": ["m1", "zzz"]}, 404, "history"),
    ("/recommend/history", {"history": []}, 400, "history"),
    ("/recommend/history", {"history": [["m1"], []]}, 400, "history"),
    ("/recommend/history", {"history": ["zzz"], "unknown": "ignore"}, 400, "history"),
    ("/similar/items", {"items": "zzz"}, 404, "items"),
    ("/events", {"events": [{"user": "u1", "item": "m1"}]}, 401, "Authorization"),
])
def test_bad_requests_get_a_json_4xx_naming_the_field(server, path, body, status, field):
    r = server.post(path, body)
    assert r.status_code == status and r.json()["field"] == field and "Traceback" not in r.text


def test_idle_and_half_sent_requests_are_closed(exports, tmp_path):
    """read_timeout_s: a connection that sends nothing, half the headers or half the body is
    closed (it held its descriptor for ever: 19,998 of 20,000 in a probe); whole requests on a
    kept-alive connection are answered."""
    s = Server(exports[0], str(tmp_path / "events.jsonl"), "read_timeout_s=1")
    try:
        body = b'{"users": ["u1"], "k": 2}'
        partial = [b"", b"POST /recommend HTTP/1.1\r\nHost: x\r\n",
                   b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]]
        socks = []
        for data in partial:
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(data)
            socks.append(c)
        whole = socket.create_connection(("127.0.0.1", s.port))
        req = (b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        whole.sendall(req)
        assert whole.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        for c in socks:
            c.settimeout(5)
            assert c.recv(65536) == b"", "an incomplete request's connection is still open"
            c.close()
        whole.close()
        assert s.post("/recommend", {"users": ["u1"], "k": 2}).status_code == 200
    finally:
        s.stop()


def test_ids_are_bounded_a_400_not_a_500(server):
    """A 5,000-digit integer id, an integer past 64 bits or a 600-character string id: 400
    naming the field (was a 500 or a reset connection)."""
    huge = b"9" * 5000
    for path, raw, field in (("/recommend", b'{"users": [' + huge + b"]}", "users"),
                             ("/recommend/history", b'{"history": [' + huge + b"]}", "history"),
                             ("/recommend", b'{"users": [9223372036854775808]}', "users"),
                             ("/recommend", b'{"users": ["' + b"a" * 600 + b'"]}', "users")):
        r = server.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] in (field, field + ".0", "body"), (path, r.text[:200])
    r = server.post("/recommend", {"users": ["u1"], "k": 2})
    assert r.status_code == 200                          # and the server still answers


def test_bounds_and_diversity(server):
    r = server.post("/recommend", content=b"x" * (2 << 20))
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = server.post("/recommend", content=b"{not json")
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = server.post("/recommend", {"users": ["u1"] * 1001})
    assert r.status_code == 400 and r.json()["field"] == "users"
    r = server.post("/recommend", {"users": ["u1"], "diversity": {"method": "mmr", "strength": 0.3}})
    assert r.status_code == 200 and r.json()["results"][0]["items"]
    r = server.post("/recommend", {"users": ["u1"], "diversity": {"method": "mmr", "strength": 1.5}})
    assert r.status_code == 400 and r.json()["field"] == "diversity"
    m = server.client.get("/metrics").text
    assert 'recsys_requests_total{endpoint="/recommend",status="200"}' in m and "recsys_batch_rows_bucket" in m


def test_an_event_changes_the_next_answer(server, exports):
    rec = Recommender.from_pretrained(exports[0])
    before = server.post("/recommend", {"users": "u5", "k": 3}).json()["results"][0]["items"]
    r = server.post("/events", {"events": [{"user": "u5", "item": before[0]}, {"user": "fresh", "item": "m2"}]},
                    headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 2
    rows = server.post("/recommend", {"users": ["u5", "fresh"], "k": 3}).json()["results"]
    u = rec.users.get("u5")
    seen = [rec.items.ids[j] for j in rec.seen[1][rec.seen[0][u]:rec.seen[0][u + 1]].tolist()]
    assert rows[0]["items"] == rec.recommend_for_history(seen + [before[0]], k=3)[0].tolist()
    assert before[0] not in rows[0]["items"]
    assert rows[1]["items"] == rec.recommend_for_history(["m2"], k=3)[0].tolist()
    r = server.post("/items", {"items": [{"item": "m50", "title": "film 50 red"}]}, headers=AUTH)
    assert r.status_code == 200 and server.client.get("/items/m50").json()["title"] == "film 50 red"
    assert server.post("/items", {"items": [{"item": "m50", "title": "again"}]}, headers=AUTH).status_code == 409


_READS = [
    ("/recommend", {"users": ["u1", "u2"], "k": 4, "exclude": ["m3"]}),
    ("/recommend", {"users": "u4", "k": 3, "where": {"title": "red"}, "explain": True}),
    ("/recommend/history", {"history": ["m1", "m2"], "k": 3, "candidates": ["m4", "m5", "m6"]}),
    ("/similar/items", {"items": ["m1", "m2"], "k": 3}),
    ("/similar/users", {"users": "u1", "k": 2}),
    ("/recommend", {"users": ["nobody"]}),
    ("/recommend", {"users": ["u1"], "k": "ten"}),
    ("/recommend", {"users": ["u1"], "colour": 1}),
    ("/recommend", {"users": ["u1"], "exclude": [["m1"], ["m2"]]}),
    ("/recommend", "[1, 2]"),
    ("/recommend", "{not json"),
    ("/recommend", ""),
    ("/similar/items", {"items": "zzz"}),
]


def test_reads_answer_alike_with_and_without_fastapi_routing(exports, tmp_path):
    """The front answers the scoring reads itself (fast_reads); through FastAPI's routing
    (fast_reads=false) every answer is the same byte for byte, and every error has the same
    status and field (pydantic words a few messages differently for JSON input)."""
    server = Server(exports[0], str(tmp_path / "fast.jsonl"))
    slow = Server(exports[0], str(tmp_path / "slow.jsonl"), "fast_reads=false")
    try:
        for path, body in _READS:
            kw = {"content": body.encode()} if isinstance(body, str) else {"json": body}
            a, b = server.client.post(path, **kw), slow.client.post(path, **kw)
            assert a.status_code == b.status_code, (path, body)
            if a.status_code == 200:
                assert a.content == b.content, (path, body)
            else:
                assert a.json()["field"] == b.json()["field"] and "Traceback" not in a.text, (path, body)
            assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
        spec = slow.client.get("/openapi.json").json()
        assert {"/recommend", "/recommend/history", "/similar/items", "/similar/users"} <= set(spec["paths"])
        assert "RecommendBody" in str(spec["paths"]["/recommend"])
        assert server.client.get("/openapi.json").json()["paths"] == spec["paths"]
        m = server.client.get("/metrics").text
        assert 'recsys_requests_total{endpoint="/similar/users",status="200"}' in m
    finally:
        server.stop()
        slow.stop()


def test_writes_are_off_without_a_token(exports, tmp_path):
    s = Server(exports[0], str(tmp_path / "events.jsonl"), token=None)
    try:
        r = s.post("/events", {"events": [{"user": "u1", "item": "m1"}]}, headers=AUTH)
        assert r.status_code == 403 and r.json()["field"] == "Authorization"
        assert s.post("/admin/reload", headers=AUTH).status_code == 403
        assert s.post("/recommend", {"users": "u1"}).status_code == 200
    finally:
        s.stop()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1] == str(pid):
                out.append(int(d))
        except OSError:
            pass
    return out


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":      # exited, not yet reaped
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_kill_9_after_an_acknowledged_event_loses_nothing(exports, tmp_path):
    log = str(tmp_path / "events.jsonl")
    s = Server(exports[0], log)
    acked = []
    try:
        assert s.client.get("/ready").json()["scoring"] == "process"     # configs/serve.yaml's default
        child = _children(s.proc.pid)
        for n in range(10):
            ev = {"user": f"k{n % 3}", "item": f"m{n % 12}"}
            if s.post("/events", {"events": [ev]}, headers=AUTH).status_code == 200:
                acked.append(ev)
        expect = s.post("/recommend", {"users": ["k0", "k1", "k2"], "k": 4}).json()
    finally:
        s.stop(signal.SIGKILL)
    assert len(acked) == 10
    assert len(child) == 1 and _gone(child[0])            # the scoring process follows its server
    s = Server(exports[0], log)
    try:
        assert s.client.get("/ready").json()["log_lines"] == 10
        assert s.post("/recommend", {"users": ["k0", "k1", "k2"], "k": 4}).json() == expect
    finally:
        s.stop()


def test_reload_under_load_fails_no_request(exports, tmp_path):
    """Clients ask without pause while the export is swapped A -> B -> A (admin call) and
    reloaded on SIGHUP: every answer is 200 and is wholly A's or wholly B's."""
    a, b = exports
    users = [f"u{n}" for n in range(15)]
    want = {name: {u: Recommender.from_pretrained(p).recommend(u, k=5)[0].tolist() for u in users}
            for name, p in (("a", a), ("b", b))}
    s = Server(a, str(tmp_path / "events.jsonl"))
    bad, answers, stop = [], {"a": 0, "b": 0}, threading.Event()

    def client(n):
        with httpx.Client(base_url=s.url, timeout=30) as c:
            i = n
            while not stop.is_set():
                u = users[i % len(users)]
                i += 1
                r = c.post("/recommend", json={"users": u, "k": 5})
                got = r.json()["results"][0]["items"] if r.status_code == 200 else None
                hit = [name for name in ("a", "b") if want[name][u] == got]
                if not hit:
                    bad.append((r.status_code, r.text[:200]))
                else:
                    answers[hit[0]] += 1
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        for target in (b, a, b):
            r = s.post("/admin/reload", {"export": target}, headers=AUTH)
            assert r.status_code == 200, r.text
            time.sleep(0.5)
        s.proc.send_signal(signal.SIGHUP)           # reload the served export (b) again
        deadline = time.time() + 30
        while s.client.get("/ready").json()["reloads"] < 4 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        ready = s.client.get("/ready").json()
        s.stop()
    assert bad == [] and answers["a"] > 0 and answers["b"] > 0
    assert ready["reloads"] == 4 and ready["export"] == b


def test_a_killed_scoring_process_leaves_the_server_answering(exports, tmp_path):
    """kill -9 of the scoring process: the server answers the same from its own copy, and
    starts a new scoring process."""
    s = Server(exports[0], str(tmp_path / "events.jsonl"))
    try:
        body = {"users": ["u1", "u2", "u3"], "k": 4}
        before = s.post("/recommend", body).json()
        child = _children(s.proc.pid)
        assert len(child) == 1
        os.kill(child[0], signal.SIGKILL)
        assert _gone(child[0])
        for _ in range(3):
            r = s.post("/recommend", body)
            assert r.status_code == 200 and r.json() == before
        deadline = time.time() + 60                     # a new scoring process is started
        while s.client.get("/ready").json()["scoring_respawns"] < 1 and time.time() < deadline:
            time.sleep(0.2)
        ready = s.client.get("/ready").json()
        assert ready["scoring"] == "process" and ready["scoring_respawns"] == 1
        assert _children(s.proc.pid) not in ([], child) and s.post("/recommend", body).json() == before
    finally:
        s.stop()
