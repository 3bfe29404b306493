"""The service's durable event log and the live histories it feeds.

The log is a JSONL file, one record a line, only ever appended to:

    {"op": "event", "user": 7, "item": 50, "ts": 1700000000.0}       an interaction
    {"op": "items", "items": [{"item": 99001, "title": "...", ...}]}   items added through the API

Guarantees:
- a record is written, flushed and fsync'ed before `append` returns, so an acknowledged record
  survives a crash (kill -9, power loss as far as the disk honours fsync);
- a crash in the middle of a write leaves at most one torn last line (no newline): it was never
  acknowledged, and `EventLog` cuts it off when it opens the file;
- line n of the log is record n: an export trained on the first `events_through` lines
  (`data.events=LOG`, meta["events_through"]) gets only the lines after them re-applied.

`Live` is the per-user overlay the service adds to a served model: the items a user interacted
with since the export (events), in order; `replay` rebuilds it (and re-adds API items) from the
log for a freshly loaded Recommender.
"""
from __future__ import annotations

import json
import logging
import os
import threading

from recsys.data.eventlog import LogError, read_records   # the log's format (data layer)

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self.lines = _repair(path)                       # whole lines in the file
        self._f = open(path, "ab")

    def append(self, records: list[dict]) -> int:
        """Write records durably (flush + fsync) and return the number of lines in the log."""
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        with self._lock:
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
            self.lines += len(records)
            return self.lines

    def read(self, start: int = 0) -> list[dict]:
        """The records of lines start, start+1, ... (the ones written so far)."""
        return read_records(self.path, start)

    def close(self) -> None:
        self._f.close()


def _repair(path: str) -> int:
    """Cut a torn last line (a write a crash interrupted, never acknowledged); the line count."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("event log %s: cut a torn last line of %d bytes (never acknowledged)", path,
                        len(data) - end)
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end].count(b"\n")


class Live:
    """user id -> the item ids of that user's events since the export, in the order of their
    newest event, without repeats."""

    def __init__(self):
        self.events: dict = {}
        self.dropped = 0            # replayed events whose item the served catalog does not hold

    def add(self, user, item) -> None:
        items = self.events.setdefault(user, [])
        if item in items:            # again: it moves to the newest place (order models read it)
            items.remove(item)
        items.append(item)

    def __contains__(self, user) -> bool:
        return user in self.events

    def history(self, rec, user) -> list:
        """Training items of `user` (none for a new user; in time order) followed by the event
        items in the order they came (an item of both: at its event's place)."""
        idx = rec.users.get(user)
        train = []
        if idx >= 0:
            indptr, indices = rec.seen
            ids = rec.items.ids
            train = [ids[j] for j in indices[int(indptr[idx]):int(indptr[idx + 1])].tolist()]
        events = self.events.get(user, ())
        again = set(events)          # an item interacted with again moves to its newest place
        return [i for i in train if i not in again] + list(events)


def replay(rec, live: Live, records: list[dict], events_from: int = 0, first_line: int = 0,
           source: str = "event log") -> None:
    """Apply log records (lines first_line, first_line + 1, ...) to a Recommender and its overlay:
    every items record whose ids the catalog lacks (an export does not hold API items unless its
    item table did), and the event records of lines >= events_from (earlier ones are in the
    export's training data). Events on items outside the catalog are dropped and counted.
    Items the catalog cannot take are a LogError naming `source` and their lines."""
    new_items, at = [], []
    for n, rec_ in enumerate(records, start=first_line):
        if rec_["op"] == "items":
            fresh = [row for row in rec_["items"] if row.get("item") not in rec.items]
            new_items += fresh
            at += [n + 1] if fresh else []
    if new_items:
        import pandas as pd
        seen, rows = set(), []
        for row in new_items:                            # one add_items call, each id once
            if row["item"] not in seen:
                seen.add(row["item"])
                rows.append(row)
        try:
            rec.add_items(pd.DataFrame(rows))
        except (KeyError, ValueError, TypeError) as e:
            why = str(e.args[0] if isinstance(e, KeyError) and e.args else e).splitlines()[0]
            raise LogError(f"{source}, items of line(s) {at[:5]}: the catalog cannot take them: {why}"[:400]) from None
    for n, rec_ in enumerate(records, start=first_line):
        if rec_["op"] == "event" and n >= events_from:
            if rec_["item"] in rec.items:
                live.add(rec_["user"], rec_["item"])
            else:
                live.dropped += 1
    if live.dropped:
        log.warning("event log: %d events name items the served catalog does not hold; dropped", live.dropped)
