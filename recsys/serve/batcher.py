"""Micro-batching: concurrent requests with the same options become one scoring call.

A request is submitted under a key (its option signature: k, exclusions, candidates, filters,
the served model it started with, ...) with a payload of `rows` users. A worker takes the key
whose oldest request has waited longest, waits until that request is `max_wait` seconds old (or
the batch holds `max_rows` rows), and runs `run(key, payloads)` in a thread, off the event loop;
`run` returns one result (or exception) per payload. While a worker is busy scoring, requests
pile up, so under load batches grow without any extra wait.

`max_rows=1` turns batching off: each request is its own call (still off the event loop).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class _Pending:
    payload: Any
    rows: int
    future: asyncio.Future
    t0: float


class Batcher:
    def __init__(self, run: Callable[[Any, list], list], max_wait_s: float = 0.002, max_rows: int = 256,
                 workers: int = 1, on_batch: Callable[[int], None] | None = None):
        self.run, self.max_wait_s, self.max_rows = run, max_wait_s, max(1, int(max_rows))
        self.on_batch = on_batch
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="recsys-score")
        self._n_workers = workers
        self._pending: dict[Any, list[_Pending]] = {}
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._n_workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False)

    async def submit(self, key, payload, rows: int = 1):
        """The result `run` gives for this payload (its exception raised here)."""
        if not self._tasks:
            self.start()
        fut = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(_Pending(payload, rows, fut, time.perf_counter()))
        self._wake.set()
        return await fut

    def _take(self, key) -> list[_Pending]:
        """Whole requests of `key`, oldest first, up to max_rows rows (at least one request)."""
        queue = self._pending.get(key, [])
        n, rows = 0, 0
        while n < len(queue) and (n == 0 or rows + queue[n].rows <= self.max_rows):
            rows += queue[n].rows
            n += 1
        taken, rest = queue[:n], queue[n:]
        if rest:
            self._pending[key] = rest
        else:
            self._pending.pop(key, None)
        return taken

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            key = min(self._pending, key=lambda k: self._pending[k][0].t0)
            if self.max_rows > 1:
                delay = self._pending[key][0].t0 + self.max_wait_s - time.perf_counter()
                if delay > 0 and sum(p.rows for p in self._pending[key]) < self.max_rows:
                    await asyncio.sleep(delay)
            batch = self._take(key)
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(sum(p.rows for p in batch))
            try:
                results = await loop.run_in_executor(self._pool, self.run, key, [p.payload for p in batch])
            except Exception as e:                  # run failed as a whole: every request gets it
                results = [e] * len(batch)
            for p, r in zip(batch, results):
                if p.future.done():                 # the client went away
                    continue
                if isinstance(r, BaseException):
                    p.future.set_exception(r)
                else:
                    p.future.set_result(r)
