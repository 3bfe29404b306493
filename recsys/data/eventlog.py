"""Reading the service's event log (JSONL; written by recsys/serve/events.py): what both the
service (replay at start and on reload) and the data preparation (`data.events=LOG`, extra
training interactions) read.

    {"op": "event", "user": 7, "item": 50, "ts": 1700000000.0}       an interaction
    {"op": "items", "items": [{"item": 99001, "title": "...", ...}]}   items added through the API

Line n of the file is record n; a torn last line (no newline: a write a crash interrupted,
never acknowledged) is not a record.
"""
from __future__ import annotations

import json
import math
import os


class LogError(ValueError):
    """The log file cannot be read as records (a corrupt line that is not the torn last one)."""


def read_records(path: str, start: int = 0) -> list[dict]:
    """Records from line `start` on; a torn last line (no newline) is not a record."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if not line.endswith(b"\n"):
                break
            if n < start:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise LogError(f"event log {path}, line {n + 1}: not JSON: {line[:80]!r}") from None
            if not isinstance(rec, dict) or rec.get("op") not in ("event", "items"):
                raise LogError(f"event log {path}, line {n + 1}: not an event or items record: {line[:80]!r}")
            where = f"event log {path}, line {n + 1}"
            _check_event(rec, where) if rec["op"] == "event" else _check_items(rec, where)
            out.append(rec)
    return out


def _check_event(rec: dict, where: str) -> None:
    """An event record names a user and an item (JSON strings or integers) and, if any, a finite
    numeric time; anything else is a LogError naming the line and the field."""
    for key in ("user", "item"):
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise LogError(f"{where}: field {key!r} must be a string or an integer id, got {v!r}"[:300])
    ts = rec.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
        raise LogError(f"{where}: field 'ts' must be a finite number, got {ts!r}"[:300])


def item_row_fault(row) -> str | None:
    """The field at fault in one added item (an object with an `item` id, a JSON string or
    integer, and text fields: strings, finite numbers or null), or None when it is sound. The
    service checks a POST /items row with it before logging, the log reader each logged row."""
    if not isinstance(row, dict):
        return ""
    v = row.get("item")
    if not (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))):
        return "item"
    for name, v in row.items():
        if not (v is None or isinstance(v, str) or (
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))):
            return name
    return None


def item_rule(fault: str) -> str:
    """What the field item_row_fault names must be ("" : the row itself)."""
    return "an object" if not fault else "a string or integer id" if fault == "item" else \
        "a string, a finite number or null"


def _check_items(rec: dict, where: str) -> None:
    """An items record holds a list of sound item rows (item_row_fault); else a LogError naming
    the line and the field."""
    rows = rec.get("items")
    if not isinstance(rows, list):
        raise LogError(f"{where}: field 'items' must be a list of item objects, got {rows!r}"[:300])
    for k, row in enumerate(rows):
        fault = item_row_fault(row)
        if fault is not None:
            what = f"items[{k}]" + (f".{fault}" if fault else "")
            raise LogError(f"{where}: {what} must be {item_rule(fault)}, got {(row.get(fault) if fault else row)!r}"[:300])
