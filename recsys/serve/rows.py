"""The rows of one scoring micro-batch: what the service answers for a batch of requests of
one kind and options, from a Recommender (in the server process or in the scoring process,
recsys/serve/scorer.py, alike).

    score_rows(rec, "error", "recommend", {"k": 10}, [7, 8], None, {1: [50, 2571]})
    -> [{"user": 7, "items": [...], "scores": [...]}, {"user": 8, ...}]    (user 8 from its live history)
"""
from __future__ import annotations

import logging

import numpy as np

from recsys.serve.events import Live, replay
from recsys.serve.request import plain_value


log = logging.getLogger(__name__)


def score_rows(rec, unknown: str, kind: str, o: dict, queries: list, exclude, histories: dict | None) -> list[dict]:
    """Result rows of one batched call of `kind` (a key of KINDS) with options `o`. histories:
    for "recommend", query position -> that user's live history (training items + events):
    those users are ranked from it through recommend_for_history, the others by recommend."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return KINDS[kind](rec, unknown, o, queries, exclude, histories)


def merged(score, calls: list[tuple[list, list | None, dict | None]]) -> list:
    """The one merge of scoring calls of one kind and options (the service's batches and the
    scoring process's queue alike): calls [(queries, per-query exclude lists or None, query
    position -> live history or None)] scored as ONE call score(queries, exclude, histories)
    -> rows (rankings are batch-invariant, so each caller gets what its own call would give),
    or one by one when the merged call fails, so a bad request fails alone. -> per call its
    rows, or the exception its own call raised."""
    if len(calls) > 1:
        queries, exclude, histories = [], [], {}
        for q, ex, hist in calls:
            histories.update({len(queries) + pos: h for pos, h in (hist or {}).items()})
            exclude += [list(x) for x in ex] if ex is not None else [[] for _ in q]
            queries += q
        try:
            rows = score(queries, exclude if any(ex is not None for _, ex, _ in calls) else None, histories)
        except Exception:
            pass
        else:
            out, at = [], 0
            for q, _, _ in calls:
                out.append(rows[at:at + len(q)])
                at += len(q)
            return out
    out = []
    for q, ex, hist in calls:
        try:
            out.append(score(q, ex, hist))
        except Exception as e:
            out.append(e)
    return out


def _recommend(rec, unknown, o, queries, exclude, histories) -> list[dict]:
    histories = histories or {}
    plain = [n for n in range(len(queries)) if n not in histories]
    live = [n for n in range(len(queries)) if n in histories]
    out: list = [None] * len(queries)
    common = dict(exclude=_pick(exclude, plain), where=o.get("where"), diversity=o.get("diversity"),
                  explain=o.get("explain", False), candidates=o.get("candidates"))
    if plain:
        res = rec.recommend([queries[n] for n in plain], o["k"], exclude_seen=o.get("exclude_seen", True),
                            unknown=unknown, **common)
        for n, row in zip(plain, result_rows(res)):
            out[n] = {"user": queries[n], **row}
    if live:
        common["exclude"] = _pick(exclude, live)
        res = rec.recommend_for_history([histories[n] for n in live], o["k"],
                                        exclude_given=o.get("exclude_seen", True), unknown="ignore", **common)
        for n, row in zip(live, result_rows(res)):
            out[n] = {"user": queries[n], **row}
    return out


def _history(rec, unknown, o, queries, exclude, histories) -> list[dict]:
    res = rec.recommend_for_history([list(h) for h in queries], o["k"], exclude_given=o.get("exclude_given", True),
                                    unknown=o.get("unknown", "error"), exclude=exclude,
                                    candidates=o.get("candidates"), where=o.get("where"),
                                    explain=o.get("explain", False))
    return list(result_rows(res))


def _similar_items(rec, unknown, o, queries, exclude, histories) -> list[dict]:
    res = rec.similar_items(queries, o["k"], space=o.get("space"), exclude=exclude,
                            candidates=o.get("candidates"), where=o.get("where"))
    return [{"item": q, **r} for q, r in zip(queries, result_rows(res))]


def _similar_users(rec, unknown, o, queries, exclude, histories) -> list[dict]:
    res = rec.similar_users(queries, o["k"], space=o.get("space"), exclude=exclude, candidates=o.get("candidates"))
    return [{"user": q, "users": r.pop("items"), **r} for q, r in zip(queries, result_rows(res))]


# the request kinds the service scores: kind -> its rows (rec, unknown, options, queries, exclude, histories)
KINDS = {"recommend": _recommend, "history": _history, "similar_items": _similar_items,
         "similar_users": _similar_users}


def _pick(rows: list | None, positions: list[int]) -> list | None:
    if rows is None:
        return None
    sub = [rows[n] for n in positions]
    return sub if any(sub) else None


def result_rows(res):
    """Result rows of a batched call, padding (NaN scores) dropped: {"items", "scores"[, "explanations"]}."""
    ids, scores = res[0], res[1]
    expl = res[2] if len(res) > 2 else None
    numeric = ids.dtype != object                     # numeric ids: tolist() gives Python numbers
    for r in range(len(ids)):
        i, s = ids[r], scores[r]
        ok = ~np.isnan(s)
        if not ok.all():
            i, s = i[ok], s[ok]
        row = {"items": i.tolist() if numeric else [plain_value(x) for x in i], "scores": s.tolist()}
        if expl is not None:
            row["explanations"] = expl[r]
        yield row


def warm(rec) -> None:
    """Build the model's per-catalog caches (item side) before the model takes traffic."""
    try:
        if len(rec.users):
            rec.recommend([rec.users.ids[0]], k=1)
    except Exception:                                  # warming is an optimisation only
        log.warning("warm-up call failed", exc_info=True)


def add_logged_items(rec, records: list[dict]) -> None:
    """The items records among log records, added to the catalog as replay adds them."""
    items = [r for r in records if r.get("op") == "items"]
    if items:
        replay(rec, Live(), items)
