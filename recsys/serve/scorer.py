"""The scoring process: the result rows of the micro-batches (recsys/serve/rows.py) computed in
a child process (`ScoringProcess`) that holds its own copy of the served model.

Why a process: scoring's own Python work (id mapping, masks, top-k, result rows) and the HTTP
work (parsing, validation, batching, answers) share one interpreter lock when both run in the
server process, so a 2-core server uses about one core (benchmarks/README.md "Serving"). In a
child process the two run side by side.

What the child holds: the export, loaded again, plus the items added since (API items and the
log's items records, sent to it in order with the scoring calls). It holds no per-user state:
the server sends with each call the live histories of the users who have events. If the child
dies, the server scores with its own copy of the model (logged) and starts a new child.

How it scores: calls queue in the child; a scoring thread takes the oldest with the calls of the
same kind and options waiting behind it, as one call (rankings are batch-invariant). One thread
for light models, two for heavy ones (`auto_threads`, from a timed call at start).

    p = ScoringProcess(export_dir, device="cpu", threads=1, unknown="error")  # loads in the background
    p.wait_ready()
    rows = p.call("rows", "recommend", {"k": 10}, [7, 8], None, {})   # = score_rows(rec, ...)
    p.call("items", [{"op": "items", "items": [{"item": 99001, "title": "..."}]}])
    p.close()
"""
from __future__ import annotations

import gc
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection

import orjson

from recsys.serve.recommender import Recommender
from recsys.serve.rows import add_logged_items, merged, score_rows, warm

log = logging.getLogger(__name__)

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds recsys/


def user_cost(rec, users: int = 64) -> float:
    """Seconds per user of one batched top-10 call (the best of three), on up to 64 users."""
    ids = list(rec.users.ids[:users])
    if not ids:
        return 0.0
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        rec.recommend(ids, k=10)
        best = min(best, time.perf_counter() - t)
    return best / len(ids)


HEAVY_USER_S = 250e-6   # a user costing more than this to score: scoring dominates the machine


def auto_threads(cost: float) -> int:
    """Scoring threads for a model whose users cost `cost` seconds each: one when scoring is
    light (its Python work would contend with a second thread's, and the server's HTTP work needs
    the other core: MovieLens hybrid, ~0.1 ms a user, 59% against 45% of in-process with two),
    two when it is heavy (the torch kernels, which release the interpreter lock, dominate, and the
    HTTP work is a small share: EASE 111% against 86%, the 1M x 100k hybrid 78% against 62%;
    benchmarks/README.md "Serving")."""
    return 1 if cost < HEAVY_USER_S or (os.cpu_count() or 1) < 2 else 2


# -- the channel: JSON frames on a socket pair (nothing pickled) --------------------------------

def _send(conn: Connection, obj) -> None:
    conn.send_bytes(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))


def _recv(conn: Connection):
    return orjson.loads(conn.recv_bytes())


_ERRORS = {c.__name__: c for c in (KeyError, ValueError, TypeError, IndexError)}


def error_line(e: BaseException) -> str:
    """"TypeName: first line of the message": an error in one line (logs, exits, 5xx answers)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _error(e: BaseException) -> list:
    """An exception as it crosses the channel: the four kinds the service maps to 4xx by name,
    with their message; anything else as a RuntimeError naming its type."""
    for name, cls in _ERRORS.items():
        if isinstance(e, cls):
            return [name, e.args[0] if isinstance(e, KeyError) and e.args else str(e)]
    return ["RuntimeError", error_line(e)]


def _raise(value: list) -> BaseException:
    name, message = value
    return _ERRORS.get(name, RuntimeError)(message)


# -- the scoring process ------------------------------------------------------------------------

class ScorerGone(RuntimeError):
    """The scoring process is not (or no longer) answering."""


class ScoringProcess:
    """A child process that loads `export_dir` (plus the items of `records`) and answers calls
    in the order they are sent: ("rows", kind, opts, queries, exclude, histories) -> score_rows,
    ("items", records) -> None. Thread-safe; calls from several threads queue in the child, which
    scores "rows" calls of one kind and options waiting together as one call of at most
    `max_rows` queries. Calls and answers cross as JSON (ids, options, rows: what the HTTP
    request and answer hold anyway)."""

    def __init__(self, export_dir: str, device: str = "cpu", threads: int | None = 1, unknown: str = "error",
                 records: list[dict] | None = None, max_rows: int = 256, scorers: int = 0):
        # A plain child interpreter on one end of a socket pair: unlike multiprocessing's spawn it
        # does not re-run the caller's main module, and unlike fork it copies no threads.
        ours, theirs = socket.socketpair()
        code = f"import sys; sys.path.insert(0, {_ROOT!r}); from recsys.serve.scorer import _child; _child({theirs.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], close_fds=True)
        theirs.close()
        self._conn = Connection(ours.detach())
        _send(self._conn, [export_dir, device, threads, unknown, records or [], max(1, int(max_rows)),
                           max(0, int(scorers))])
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        self.alive = False
        self.info: dict = {}          # from the child once ready: threads, us_per_user
        self.on_exit = None           # called (with this object) when the child exits on its own
        self.respawn_delay = 0.5      # the delay this process was started again after (Service)
        self._reader: threading.Thread | None = None
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until the child has loaded the model; its load error, if any, raised here."""
        try:
            if not self._conn.poll(timeout):
                raise ScorerGone(f"scoring process not ready within {timeout:.0f} s")
            status, message = _recv(self._conn)
            if status != "ready":
                raise ScorerGone(f"scoring process could not load the export: {message}")
        except (EOFError, OSError):
            self.close()
            raise ScorerGone(f"scoring process exited while loading (exit code {self.proc.poll()})") from None
        except ScorerGone:
            self.close()
            raise
        self.alive, self.info = True, message
        self._reader = threading.Thread(target=self._read, name="recsys-scorer-reader", daemon=True)
        self._reader.start()

    def call(self, op: str, *args):
        """The child's answer to (op, *args); its exception raised here (KeyError, ValueError,
        TypeError and IndexError as themselves, others as RuntimeError), ScorerGone when it
        cannot answer. A "rows" call's histories ({position: items}) cross as [[position, items]]."""
        if op == "rows" and args[4]:
            args = (*args[:4], list(args[4].items()))
        fut: Future = Future()
        with self._lock:
            if not self.alive:
                raise ScorerGone("scoring process is not running")
            n = next(self._ids)
            self._pending[n] = fut
            try:
                _send(self._conn, [n, op, args])
            except (OSError, ValueError) as e:
                self._pending.pop(n, None)
                raise ScorerGone(f"scoring process: {e}") from None
        return fut.result()

    def _read(self) -> None:
        while True:
            try:
                n, ok, value = _recv(self._conn)
            except (EOFError, OSError):
                break
            fut = self._pending.pop(n, None)
            if fut is not None:
                fut.set_result(value) if ok else fut.set_exception(_raise(value))
        with self._lock:
            was, self.alive = self.alive, False
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(ScorerGone("scoring process exited"))
        if was:                             # not closed by us
            log.error("scoring process %s exited (code %s); scoring in the server process meanwhile",
                      self.proc.pid, self.proc.wait())
            if self.on_exit is not None:
                self.on_exit(self)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child after the calls already sent (their answers still arrive)."""
        with self._lock:
            self.alive = False
            try:
                _send(self._conn, [None, "stop", []])
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)            # the answers the child sent before it stopped
        self._conn.close()


# -- inside the child ---------------------------------------------------------------------------

def _child(fd: int) -> None:
    """The scoring process: its settings come first on the connection, then the calls."""
    import torch

    conn = Connection(fd)
    try:
        export_dir, device, threads, unknown, records, max_rows, scorers = _recv(conn)
    except (EOFError, OSError):
        return
    if threads:
        torch.set_num_threads(int(threads))
    try:
        rec = Recommender.from_pretrained(export_dir, device=device)
        add_logged_items(rec, records)
        warm(rec)
        cost = user_cost(rec)
    except Exception as e:
        _send(conn, ["error", error_line(e)])
        return
    scorers = scorers or auto_threads(cost)
    gc.collect()
    gc.freeze()                             # the model's objects out of the collector's passes
    _send(conn, ["ready", {"threads": scorers, "us_per_user": round(cost * 1e6, 1)}])
    _Child(conn, rec, unknown, max_rows).run(scorers)


class _Child:
    """The child's loop: one thread receives calls into a queue; `scorers` threads each take the
    oldest call with the "rows" calls of its kind and options waiting right behind it, and score
    them as one."""

    def __init__(self, conn: Connection, rec, unknown: str, max_rows: int):
        self.conn, self.rec, self.unknown, self.max_rows = conn, rec, unknown, max_rows
        self.queue: deque = deque()         # calls received, not yet taken by a scoring thread
        self.ready = threading.Condition()
        self.sending, self.adding = threading.Lock(), threading.Lock()
        self.closing = False

    def run(self, scorers: int) -> None:
        workers = [threading.Thread(target=self._work, name=f"recsys-scorer-{k}", daemon=True)
                   for k in range(max(1, int(scorers)))]
        for w in workers:
            w.start()
        try:
            while True:
                msg = _recv(self.conn)
                if msg[1] == "stop":            # after the calls sent before it
                    break
                with self.ready:
                    self.queue.append(msg)
                    self.ready.notify()
        except (EOFError, OSError):             # the server is gone
            self._stop(drop=True)
        self._stop(drop=False)
        for w in workers:
            w.join()

    def _stop(self, drop: bool) -> None:
        with self.ready:
            self.closing = True
            if drop:                            # nobody to answer
                self.queue.clear()
            self.ready.notify_all()

    def _take(self) -> tuple | None:
        with self.ready:
            while not self.queue and not self.closing:
                self.ready.wait()
            if not self.queue:
                return None
            n, op, args = self.queue.popleft()
            group, rows = [(n, args)], len(args[2]) if op == "rows" else 0
            while (op == "rows" and self.queue and self.queue[0][1] == "rows" and self.queue[0][2][:2] == args[:2]
                   and rows + len(self.queue[0][2][2]) <= self.max_rows):
                rows += len(self.queue[0][2][2])
                group.append((self.queue[0][0], self.queue.popleft()[2]))
            return op, group

    def _work(self) -> None:
        while (job := self._take()) is not None:
            op, group = job
            if op == "rows":
                replies = _rows_replies(self.rec, self.unknown, group)
            else:
                n, args = group[0]
                try:
                    if op != "items":
                        raise ValueError(f"unknown scoring-process call {op!r}")
                    with self.adding:
                        replies = [[n, True, add_logged_items(self.rec, *args)]]
                except Exception as e:
                    replies = [[n, False, _error(e)]]
            try:
                for reply in replies:
                    self._answer(reply)
            except (OSError, ValueError):       # the server is gone
                self._stop(drop=True)
                return

    def _answer(self, reply: list) -> None:
        with self.sending:
            try:
                _send(self.conn, reply)
            except TypeError as e:              # a value JSON cannot hold
                _send(self.conn, [reply[0], False, ["RuntimeError", f"unsendable answer: {e}"]])


def _rows_replies(rec, unknown: str, group: list[tuple[int, list]]) -> list[list]:
    """Replies to "rows" calls of one kind and options, waiting together: rows.merged (one
    call, or one by one when it fails: a bad request fails alone)."""
    kind, o = group[0][1][:2]
    out = merged(lambda q, ex, hist: score_rows(rec, unknown, kind, o, q, ex, hist),
                 [(q, ex, {int(p): h for p, h in hist or ()}) for _, (_, _, q, ex, hist) in group])
    return [[n, False, _error(r)] if isinstance(r, Exception) else [n, True, r] for (n, _), r in zip(group, out)]
