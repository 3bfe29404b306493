"""Fuzzing the HTTP request bodies of a real server (`python serve.py` in a subprocess, as in
tests/test_serve_http.py): bodies of the right shape with values of every JSON type (ids known,
unknown, huge, nested; k of any size; filters, candidates, exclusions, diversity, explanations),
bodies of any JSON, and bytes that are not JSON, sent to every endpoint. The properties: each
answer is a 200 with the endpoint's JSON, or a 4xx whose JSON is one line naming a field - never
a 5xx, a stack trace or a dropped connection; the server answers after the run; every event it
accepted is in the durable log as a sound record (recsys/data/eventlog.py), and nothing else is.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.eventlog import read_records

from test_serve_http import AUTH, Server, exports  # noqa: F401  (exports: a fixture)

pytestmark = pytest.mark.filterwarnings("ignore")

USERS = ["u1", "u2", "u14", "nobody"]
ITEMS = ["m0", "m1", "m5", "m11", "zzz"]
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                        st.text(max_size=6))
json_any = st.recursive(json_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                         st.dictionaries(st.text(max_size=5), c, max_size=3)),
                        max_leaves=8)


def mostly(good, wild=json_any):
    """`good` nine times in ten: most bodies get past the first fields to the later ones."""
    return st.integers(0, 9).flatmap(lambda n: good if n else wild)


user = mostly(st.sampled_from(USERS))
item = mostly(st.sampled_from(ITEMS))
k = mostly(st.integers(1, 30), st.one_of(st.integers(-3, 0), st.sampled_from([10 ** 6, 2 ** 63]), json_any))
where = mostly(st.one_of(st.none(), st.just({"title": "red"}), st.just({"title": ["red", "blue"]})),
               st.dictionaries(st.sampled_from(["title", "genre"]), json_any, max_size=2))
opt = {"k": k, "exclude": mostly(st.lists(item, max_size=3), st.lists(st.lists(item, max_size=2), max_size=3)),
       "where": where, "explain": mostly(st.one_of(st.booleans(), st.integers(0, 3)), st.integers(-2, 2 ** 40))}
BODIES = {
    "/recommend": st.fixed_dictionaries({"users": st.one_of(user, st.lists(user, max_size=4))},
                                        optional={**opt, "candidates": st.lists(item, max_size=4), "items": st.lists(item, max_size=4),
                                                  "exclude_seen": mostly(st.booleans()),
                                                  "diversity": st.one_of(st.none(), st.fixed_dictionaries(
                                                      {"method": st.sampled_from(["mmr", "x"]),
                                                       "strength": mostly(st.floats(0, 1), st.floats(-1, 2))}), json_any)}),
    "/recommend/history": st.fixed_dictionaries({"history": st.one_of(st.lists(item, max_size=4),
                                                                      st.lists(st.lists(item, max_size=3), max_size=3))},
                                                optional={**opt, "candidates": st.lists(item, max_size=4),
                                                          "unknown": mostly(st.sampled_from(["error", "ignore"]), st.sampled_from(["popular", "x"])),
                                                          "exclude_given": st.booleans()}),
    "/similar/items": st.fixed_dictionaries({"items": st.one_of(item, st.lists(item, max_size=3))},
                                            optional={"k": k, "space": mostly(st.none(), st.text(max_size=8)),
                                                      "candidates": st.lists(item, max_size=3), "where": where}),
    "/similar/users": st.fixed_dictionaries({"users": st.one_of(user, st.lists(user, max_size=3))},
                                            optional={"k": k, "exclude": st.lists(user, max_size=3),
                                                      "candidates": st.lists(user, max_size=3)}),
    "/events": st.fixed_dictionaries({"events": st.lists(st.fixed_dictionaries(
        {"user": user, "item": item}, optional={"ts": mostly(st.floats(0, 2e9), st.one_of(st.floats(allow_nan=False), json_any))}), max_size=3)}),
    "/items": st.fixed_dictionaries({"items": st.lists(st.one_of(st.fixed_dictionaries(
        {"item": mostly(st.text(min_size=1, max_size=6))},
        optional={"title": mostly(st.text(max_size=10))}), json_any), max_size=2)}),
}
shaped = st.sampled_from(sorted(BODIES)).flatmap(
    lambda p: st.tuples(st.just(p), BODIES[p].map(lambda b: json.dumps(b).encode())))
request = st.one_of(
    shaped, shaped, shaped, shaped,
    st.tuples(st.sampled_from(sorted(BODIES)), json_any.map(lambda b: json.dumps(b).encode())),
    st.tuples(st.sampled_from(sorted(BODIES)), st.binary(max_size=40)))


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):  # noqa: F811
    log = str(tmp_path_factory.mktemp("fuzz_http") / "events.jsonl")
    s = Server(exports[0], log)
    s.log = log
    s.accepted = 0
    yield s
    s.stop()


@given(request)
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_body_gets_a_200_or_a_one_line_4xx_naming_a_field(server, req):
    path, body = req
    r = server.client.post(path, content=body, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (path, body[:300], r.status_code, r.text[:300])
    answer = r.json()
    if r.status_code == 200:
        assert isinstance(answer, dict), answer
        if path == "/events":
            server.accepted += answer["accepted"]
    else:
        assert set(answer) == {"error", "field"} and isinstance(answer["error"], str), answer
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"], answer


def test_after_the_fuzz_the_server_answers_and_its_log_is_sound(server):
    assert server.client.get("/health").status_code == 200
    r = server.post("/recommend", {"users": ["u1"], "k": 2})
    assert r.status_code == 200 and len(r.json()["results"][0]["items"]) == 2
    records = read_records(server.log)          # (a LogError here: an unsound line was logged)
    assert sum(rec["op"] == "event" for rec in records) == server.accepted
