"""What the HTTP service does, without HTTP: the served model and its live overlay, events,
items, hot reload, and the scoring calls the micro-batcher makes (recsys/serve/http.py routes
requests here).

    svc = Service("outputs/run/export", event_log="events.jsonl")
    svc.add_events([(7, 50, None)])              # logged (fsync) first, then live
    svc.score("recommend", svc.served, {"k": 10, ...}, [([7], None)])   # -> [[{"user": 7, ...}]]
    svc.reload()                                 # new export + the log lines after it, one swap

A user with events is served from their live history (training items + event items) through
`recommend_for_history`: memory models see the longer history, learned models fold the user in
again, a user the export never saw is created by their first event.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from recsys.serve.events import EventLog, Live, replay
from recsys.serve.recommender import Recommender

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the service refuses: HTTP status, one-line message, the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class Served:
    """One loaded export and everything added on top of it; replaced whole on reload."""
    rec: Recommender
    live: Live
    export: str
    lines: int = 0                  # event log lines applied
    loaded_at: float = field(default_factory=time.time)

    @property
    def events_through(self) -> int:
        return int(self.rec.meta.get("events_through", 0) or 0)


class Service:
    def __init__(self, export_dir: str, event_log: str | None = None, unknown: str = "error",
                 threads: int | None = 1, device: str = "cpu"):
        if unknown not in ("error", "popular"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'popular'")
        if threads:
            import torch
            torch.set_num_threads(int(threads))      # one core per scoring call: no oversubscription
        self.unknown, self.device = unknown, device
        if not os.path.isdir(export_dir):            # before the log file is created
            raise FileNotFoundError(f"export directory not found: {export_dir}")
        self.log = EventLog(event_log) if event_log else None
        self._write = threading.Lock()               # events, items and the reload swap, in order
        self._reload = threading.Lock()
        self.reloads = 0
        self.served = self._load(export_dir)
        _settle()

    # -- loading -------------------------------------------------------------------------------

    def _load(self, export_dir: str) -> Served:
        rec = Recommender.from_pretrained(export_dir, device=self.device)
        s = Served(rec, Live(), export_dir)
        if self.log is not None:
            records = self.log.read()
            replay(rec, s.live, records, events_from=s.events_through)
            s.lines = len(records)
        _warm(rec)
        return s

    def reload(self, export_dir: str | None = None) -> dict:
        """Load an export (default: the served path again), re-apply the log lines after its
        `events_through`, and swap it in: requests keep the model they started with."""
        with self._reload:
            t = time.perf_counter()
            new = self._load(export_dir or self.served.export)
            with self._write:                           # catch up with what was logged meanwhile
                if self.log is not None:
                    more = self.log.read(new.lines)
                    replay(new.rec, new.live, more, events_from=new.events_through, first_line=new.lines)
                    new.lines += len(more)
                self.served = new
                self.reloads += 1
            _settle()
            log.info("reloaded %s in %.2fs (%d log lines, events after line %d re-applied)", new.export,
                     time.perf_counter() - t, new.lines, new.events_through)
            return {"export": new.export, "users": len(new.rec.users), "items": len(new.rec.items),
                    "log_lines": new.lines, "events_through": new.events_through,
                    "live_users": len(new.live.events), "seconds": round(time.perf_counter() - t, 3)}

    # -- writes --------------------------------------------------------------------------------

    def _need_log(self) -> EventLog:
        if self.log is None:
            raise ApiError(403, "writes are off: the service runs without an event log (set event_log)")
        return self.log

    def add_events(self, events: list[tuple]) -> dict:
        """events: [(user, item, timestamp or None)]; every item must be in the catalog. Logged
        durably, then visible to the next request."""
        log_ = self._need_log()
        with self._write:
            s = self.served
            records = []
            for n, (user, item, ts) in enumerate(events):
                item = conform(item, s.rec.items)
                if item not in s.rec.items:
                    raise ApiError(404, f"unknown item id {item!r}: not in the catalog (add it through /items)",
                                   f"events[{n}].item")
                user = conform(user, s.rec.users)
                records.append({"op": "event", "user": user, "item": item,
                                "ts": time.time() if ts is None else ts})
            lines = log_.append(records)
            for r in records:
                s.live.add(r["user"], r["item"])
            s.lines = lines
        return {"accepted": len(records), "log_lines": lines}

    def add_items(self, rows: list[dict]) -> dict:
        """rows: [{"item": id, text fields...}]; the catalog grows at once (Recommender.add_items),
        then the rows are logged (replayed on restart and reload)."""
        import pandas as pd
        log_ = self._need_log()
        with self._write:
            s = self.served
            for n, row in enumerate(rows):
                if "item" not in row:
                    raise ApiError(400, "each item needs an 'item' id", f"items[{n}].item")
                row["item"] = conform(row["item"], s.rec.items)
                if row["item"] in s.rec.items:
                    raise ApiError(409, f"item id {row['item']!r} is already in the catalog", f"items[{n}].item")
            try:
                added = s.rec.add_items(pd.DataFrame(rows))
            except (KeyError, ValueError, TypeError) as e:
                raise ApiError(400, _one_line(e), "items") from None
            lines = log_.append([{"op": "items", "items": rows}])
            s.lines = lines
        return {"added": added, "items": len(s.rec.items), "log_lines": lines}

    # -- scoring (called by the micro-batcher, in a worker thread) ------------------------------

    def score(self, kind: str, served: Served, opts: dict, payloads: list[tuple[list, list | None]]) -> list:
        """One call for many requests of one kind and options: payloads [(queries, per-query
        exclude lists or None)] -> per payload a list of result rows, or the ApiError of that
        request (a combined call that fails is retried request by request to find it)."""
        try:
            rows = self._score_rows(kind, served, opts, [q for p in payloads for q in p[0]],
                                    _exclude_rows(payloads))
        except Exception as e:
            if len(payloads) == 1:
                return [as_api_error(e)]
            return [self.score(kind, served, opts, [p])[0] for p in payloads]
        out, at = [], 0
        for queries, _ in payloads:
            out.append(rows[at:at + len(queries)])
            at += len(queries)
        return out

    def _score_rows(self, kind: str, s: Served, o: dict, queries: list, exclude) -> list[dict]:
        rec, k = s.rec, o["k"]
        if kind == "recommend":
            live = [n for n, u in enumerate(queries) if u in s.live]
            plain = [n for n, u in enumerate(queries) if u not in s.live]
            out: list = [None] * len(queries)
            common = dict(exclude=_pick(exclude, plain), where=o.get("where"), diversity=o.get("diversity"),
                          explain=o.get("explain", False))
            if plain:
                res = rec.recommend([queries[n] for n in plain], k, exclude_seen=o.get("exclude_seen", True),
                                    unknown=self.unknown, items=o.get("items"), **common)
                for n, row in zip(plain, _rows(res)):
                    out[n] = {"user": queries[n], **row}
            if live:
                common["exclude"] = _pick(exclude, live)
                res = rec.recommend_for_history([s.live.history(rec, queries[n]) for n in live], k,
                                                exclude_given=o.get("exclude_seen", True), unknown="ignore",
                                                candidates=o.get("items"), **common)
                for n, row in zip(live, _rows(res)):
                    out[n] = {"user": queries[n], **row}
            return out
        if kind == "history":
            res = rec.recommend_for_history([list(h) for h in queries], k, exclude_given=o.get("exclude_given", True),
                                            unknown=o.get("unknown", "error"), exclude=exclude,
                                            candidates=o.get("candidates"), where=o.get("where"),
                                            explain=o.get("explain", False))
            return list(_rows(res))
        if kind == "similar_items":
            res = rec.similar_items(queries, k, space=o.get("space"), exclude=exclude,
                                    candidates=o.get("candidates"), where=o.get("where"))
            return [{"item": q, **r} for q, r in zip(queries, _rows(res))]
        if kind == "similar_users":
            res = rec.similar_users(queries, k, space=o.get("space"), exclude=exclude)
            return [{"user": q, "users": r.pop("items"), **r} for q, r in zip(queries, _rows(res))]
        raise ValueError(f"unknown kind {kind!r}")

    def item(self, item_id) -> dict:
        rec = self.served.rec
        i = rec.items.get(conform(item_id, rec.items))
        if i < 0:
            raise ApiError(404, f"unknown item id {item_id!r}", "item")
        return {"item": _plain(rec.items.ids[i]), "title": None if rec.titles is None else rec.titles[i],
                "attributes": {a: v[i] for a, v in rec.attributes.items()}}


def _settle() -> None:
    """The served export's Python objects (id lists, vocabulary dicts: millions for a large
    catalog) go to the collector's permanent generation, so that its passes, which requests'
    allocations trigger, no longer walk them (each full pass stalls every request). Called
    after each load; what a replaced export leaves in cycles is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def conform(x, vocab):
    """A JSON id in the vocabulary's kind: "7" is 7 in an integer vocabulary (recsys/data/ids.py)."""
    if isinstance(x, str) and vocab.ids and isinstance(vocab.ids[0], (int, np.integer)) and x not in vocab:
        t = x.strip()
        if t == "0" or (t.lstrip("-")[:1] in "123456789" and t.lstrip("-").isdigit() and t[:1] != "+"):
            return int(t)
    return x


def _exclude_rows(payloads) -> list | None:
    if all(p[1] is None for p in payloads):
        return None
    return [list(x) for queries, ex in payloads for x in (ex if ex is not None else [[]] * len(queries))]


def _pick(rows: list | None, positions: list[int]) -> list | None:
    if rows is None:
        return None
    sub = [rows[n] for n in positions]
    return sub if any(sub) else None


def _rows(res):
    """Result rows of a batched call, padding (NaN scores) dropped: {"items", "scores"[, "explanations"]}."""
    ids, scores = res[0], res[1]
    expl = res[2] if len(res) > 2 else None
    plain = ids.dtype != object                       # numeric ids: tolist() gives Python numbers
    for r in range(len(ids)):
        i, s = ids[r], scores[r]
        ok = ~np.isnan(s)
        if not ok.all():
            i, s = i[ok], s[ok]
        row = {"items": i.tolist() if plain else [_plain(x) for x in i], "scores": s.tolist()}
        if expl is not None:
            row["explanations"] = expl[r]
        yield row


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(msg).splitlines()[0] if str(msg) else type(e).__name__


_FIELDS = ("users", "items", "exclude", "where", "candidates", "history", "space", "k", "diversity", "unknown")


def as_api_error(e: BaseException) -> ApiError:
    """A Recommender exception as a 4xx: KeyError (an unknown id) -> 404, bad values -> 400; the
    field is the argument the message starts with, when it names one."""
    if isinstance(e, ApiError):
        return e
    msg = _one_line(e)
    if not isinstance(e, (KeyError, ValueError, TypeError, IndexError)):
        log.exception("scoring failed")
        return ApiError(500, f"internal error ({type(e).__name__})")
    head = msg.split(":")[0].split("=")[0].split("[")[0].split(".")[0].split()[:1]   # "diversity.strength=..."
    fld = head[0] if head and head[0] in _FIELDS else None
    if fld is None and "user" in msg:
        fld = "users"
    elif fld is None and "history" in msg:
        fld = "history"
    return ApiError(404 if isinstance(e, KeyError) else 400, msg, fld)


def _warm(rec: Recommender) -> None:
    """Build the model's per-catalog caches (item side) before the model takes traffic."""
    try:
        if len(rec.users):
            rec.recommend([rec.users.ids[0]], k=1)
    except Exception:                                  # warming is an optimisation only
        log.warning("warm-up call failed", exc_info=True)
