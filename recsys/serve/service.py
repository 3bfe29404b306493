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
import math
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from recsys.data.eventlog import item_row_fault, item_rule
from recsys.serve.events import EventLog, Live, replay
from recsys.serve.recommender import Recommender
from recsys.serve.request import plain_value
from recsys.serve.rows import merged, score_rows, warm
from recsys.serve.scorer import ScorerGone, ScoringProcess

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
    scorer: ScoringProcess | None = None   # the scoring process of this export (scoring_process=True)

    @property
    def events_through(self) -> int:
        return int(self.rec.meta.get("events_through", 0) or 0)


class Service:
    def __init__(self, export_dir: str, event_log: str | None = None, unknown: str = "error",
                 threads: int | None = 1, device: str = "cpu", scoring_process: bool = False,
                 max_batch_users: int = 256, scoring_threads: int = 0):
        """scoring_process: score in a child process holding a second copy of the model
        (recsys/serve/scorer.py; twice the model's memory), instead of in the server's threads;
        it merges calls waiting for it into calls of at most max_batch_users queries and scores
        on scoring_threads threads (0: chosen by the child from what a user costs to score)."""
        if unknown not in ("error", "popular"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'popular'")
        if threads:
            import torch
            torch.set_num_threads(int(threads))      # one core per scoring call: no oversubscription
        if scoring_process and os.name != "posix":    # the child gets its socket through pass_fds
            log.warning("scoring_process needs a POSIX system; scoring in the server's threads")
            scoring_process = False
        self.unknown, self.device, self.threads, self.scoring_process = unknown, device, threads, scoring_process
        self.max_batch_users, self.scoring_threads = max_batch_users, scoring_threads
        if not os.path.isdir(export_dir):            # before the log file is created
            raise FileNotFoundError(f"export directory not found: {export_dir}")
        self.log = EventLog(event_log) if event_log else None
        self._write = threading.Lock()               # events, items and the reload swap, in order
        self._reload = threading.Lock()
        self.reloads = 0
        self.respawns = 0                            # scoring processes started again after a crash
        self._closed = False
        self.served = self._load(export_dir)
        _settle()

    # -- loading -------------------------------------------------------------------------------

    def _log_name(self) -> str:
        return f"event log {self.log.path}" if self.log is not None else "event log"

    def _load(self, export_dir: str) -> Served:
        records = self.log.read() if self.log is not None else []
        scorer = self._start_scorer(export_dir, records) if self.scoring_process else None   # loads meanwhile
        try:
            rec = Recommender.from_pretrained(export_dir, device=self.device)
            s = Served(rec, Live(), export_dir, scorer=scorer)
            replay(rec, s.live, records, events_from=s.events_through, source=self._log_name())
            s.lines = len(records)
            warm(rec)
            if scorer is not None:
                scorer.wait_ready()
                self._watch(s, scorer)
        except BaseException:
            if scorer is not None:
                scorer.close()
            raise
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
                    replay(new.rec, new.live, more, events_from=new.events_through, first_line=new.lines,
                           source=self._log_name())
                    _send_items(new.scorer, more)
                    new.lines += len(more)
                old, self.served = self.served, new
                self.reloads += 1
            if old.scorer is not None:          # after the calls already sent to it (none fails:
                old.scorer.close()              # later ones score with the old model in-process)
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
                user = same_kind(user, s.rec.users, f"events[{n}].user")
                if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
                    raise ApiError(400, f"events[{n}].ts={ts!r} must be a finite number of seconds", f"events[{n}].ts")
                item = conform(item, s.rec.items)
                if item not in s.rec.items:
                    raise ApiError(404, f"unknown item id {item!r}: not in the catalog (add it through /items)",
                                   f"events[{n}].item")
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
                fault = item_row_fault(row)              # (a row is a dict here: the body's schema)
                if fault is not None:
                    raise ApiError(400, f"items[{n}].{fault}={row[fault]!r}"[:200] + f" must be {item_rule(fault)}",
                                   f"items[{n}].{fault}")
                bounded_id(row["item"], f"items[{n}].item")
                row["item"] = same_kind(row["item"], s.rec.items, f"items[{n}].item")
                if row["item"] in s.rec.items:
                    raise ApiError(409, f"item id {row['item']!r} is already in the catalog", f"items[{n}].item")
            try:
                added = s.rec.add_items(pd.DataFrame(rows))
            except (KeyError, ValueError, TypeError) as e:
                raise ApiError(400, _one_line(e), "items") from None
            record = {"op": "items", "items": rows}
            lines = log_.append([record])
            s.lines = lines
            _send_items(s.scorer, [record])
        return {"added": added, "items": len(s.rec.items), "log_lines": lines}

    # -- scoring (called by the micro-batcher, in a worker thread) ------------------------------

    def score(self, kind: str, served: Served, opts: dict, payloads: list[tuple[list, list | None]]) -> list:
        """One call for many requests of one kind and options: payloads [(queries, per-query
        exclude lists or None)] -> per payload a list of result rows, or the ApiError of that
        request (a combined call that fails is retried request by request to find it)."""
        out = merged(lambda q, ex, _: self._score_rows(kind, served, opts, q, ex),
                     [(queries, ex, None) for queries, ex in payloads])
        return [as_api_error(r) if isinstance(r, Exception) else r for r in out]

    def _score_rows(self, kind: str, s: Served, o: dict, queries: list, exclude) -> list[dict]:
        histories = None
        if kind == "recommend" and s.live.events:      # users with events: ranked from their live history
            histories = {n: s.live.history(s.rec, u) for n, u in enumerate(queries) if u in s.live}
        if s.scorer is not None and s.scorer.alive:
            try:
                return s.scorer.call("rows", kind, o, queries, exclude, histories)
            except ScorerGone:
                pass                                    # logged once by the scorer; score here
        return score_rows(s.rec, self.unknown, kind, o, queries, exclude, histories)

    def close(self) -> None:
        """Stop the served export's scoring process, if any."""
        self._closed = True
        if self.served.scorer is not None:
            self.served.scorer.close()

    # -- the scoring process; one that died is started again (the server scores meanwhile) -----

    def _start_scorer(self, export_dir: str, records: list[dict]) -> ScoringProcess:
        """A scoring process loading `export_dir` plus the items records among `records`."""
        return ScoringProcess(export_dir, self.device, self.threads, self.unknown,
                              [r for r in records if r.get("op") == "items"], self.max_batch_users,
                              self.scoring_threads)

    def _watch(self, s: Served, p: ScoringProcess) -> None:
        """When `p`, the scoring process of `s`, exits on its own, start another after a delay."""
        p.on_exit = lambda p_: self._respawn_later(s, _next_delay(p_))

    def _respawn_later(self, s: Served, delay: float) -> None:
        t = threading.Timer(delay, self._respawn, args=(s, delay))
        t.daemon = True
        t.start()

    def _respawn(self, s: Served, delay: float) -> None:
        """A new scoring process for `s` (while it is still served): the export plus the log's
        items records, then the items logged while it loaded, attached under the write lock.
        Failing again, it is retried with a doubled delay (at most a minute)."""
        if self._closed or s is not self.served:
            return
        with self._write:
            records = self.log.read() if self.log is not None else []
        p = self._start_scorer(s.export, records)
        try:
            p.wait_ready()
        except ScorerGone as e:
            log.error("scoring process could not be started again (%s); retrying in %.0f s", e, 2 * delay)
            self._respawn_later(s, min(2 * delay, 60.0))
            return
        with self._write:
            if self._closed or s is not self.served:
                p.close()
                return
            if self.log is not None:
                _send_items(p, self.log.read(len(records)))
            p.respawn_delay = delay
            self._watch(s, p)
            s.scorer = p
            self.respawns += 1
        log.warning("scoring process started again (pid %d)", p.pid)

    def item(self, item_id) -> dict:
        rec = self.served.rec
        i = rec.items.get(conform(item_id, rec.items))
        if i < 0:
            raise ApiError(404, f"unknown item id {item_id!r}", "item")
        return {"item": plain_value(rec.items.ids[i]), "title": None if rec.titles is None else rec.titles[i],
                "attributes": {a: v[i] for a, v in rec.attributes.items()}}


def _settle() -> None:
    """The served export's Python objects (id lists, vocabulary dicts: millions for a large
    catalog) go to the collector's permanent generation, so that its passes, which requests'
    allocations trigger, no longer walk them (each full pass stalls every request). Called
    after each load; what a replaced export leaves in cycles is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


MAX_ID_CHARS = 512          # a string id longer than this is refused (400 naming the field)


def bounded_id(x, field: str) -> None:
    """A JSON id the service takes: a 64-bit integer or a string of at most MAX_ID_CHARS."""
    if isinstance(x, str) and len(x) > MAX_ID_CHARS:
        raise ApiError(400, f"{field}: a string id of {len(x):,} characters; at most {MAX_ID_CHARS} allowed", field)
    if isinstance(x, int) and not -(2 ** 63) <= x < 2 ** 63:
        raise ApiError(400, f"{field}: an integer id outside 64 bits", field)


def same_kind(x, vocab, field: str):
    """An id of a new event in the kind of the catalog's ids (one id type per catalog, for the
    life of the catalog: the export, the log and a retraining on it): in an integer vocabulary a
    plain-integer text is that integer and any other string is refused; in a string vocabulary
    an integer is its text. ApiError 400 naming the field."""
    x = conform(x, vocab)
    if vocab.id_type is None:           # an old export holding both kinds: as given
        return x
    ints = vocab.id_type == "int"
    if ints and isinstance(x, str):
        raise ApiError(400, f"{field}={x!r} is not an integer id; this model's ids are integers "
                       f"(one id type per catalog)", field)
    if not ints and isinstance(x, (int, np.integer)):
        return str(x)
    return x


def conform(x, vocab):
    """A JSON id in the vocabulary's kind: "7" is 7 in an integer vocabulary (recsys/data/ids.py)."""
    ints = vocab.id_type == "int" or (vocab.id_type is None and bool(vocab.ids) and isinstance(vocab.ids[0], int))
    if isinstance(x, str) and ints and x not in vocab:      # (id_type None: an old export of both kinds)
        t = x.strip()
        if t == "0" or (t.lstrip("-")[:1] in "123456789" and t.lstrip("-").isdigit() and t[:1] != "+"):
            return int(t)
    return x


def _send_items(scorer: ScoringProcess | None, records: list[dict]) -> None:
    """Items records to a scoring process, in order with its scoring calls."""
    if scorer is not None and scorer.alive and any(r.get("op") == "items" for r in records):
        try:
            scorer.call("items", records)
        except ScorerGone:
            pass
        except Exception:                   # the copies would differ: score here from now on
            log.exception("the scoring process could not add the items; scoring in the server process")
            scorer.close()


def _next_delay(p: ScoringProcess) -> float:
    """Seconds before starting again a scoring process that exited: 1, doubled (to a minute)
    while each new one dies within a minute of starting."""
    if time.time() - p.started >= 60:
        return 1.0
    return min(2 * p.respawn_delay, 60.0)


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
