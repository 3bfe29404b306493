"""Load benchmark of the HTTP service (serve.py): requests/s and p50/p99 latency at 1, 8 and 64
concurrent clients asking top-10 for one user each, with and without micro-batching, next to
in-process batched `recommend` over the same users.

    python benchmarks/serve_load.py                        # embedded MovieLens, ItemKNN export
    python benchmarks/serve_load.py --model ease --seconds 10 --out benchmarks/results/serve_load.md
    python benchmarks/serve_load.py --model hybrid --repeats 3 --max-requests 60000 --serve "workers=1"

The server binds 127.0.0.1 on a free port; every client sends one request at a time over one
keep-alive connection (a minimal HTTP/1.1 client, an asyncio protocol sending pre-built requests,
so the load generator costs little CPU next to the server) for a fixed time, at most --max-requests per setting. --serve passes
serve.py settings; --repeats runs every setting that many rounds (the in-process reference in each
round) and reports medians, and each round's ratio to its own reference.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_for(model: str, path: str) -> str:
    if os.path.isdir(path):
        return path
    import pandas as pd

    import recsys
    data = os.path.join(ROOT, "data", "ml-latest-small")
    ratings = pd.read_csv(os.path.join(data, "ratings.csv"))
    movies = pd.read_csv(os.path.join(data, "movies.csv"))
    rec = recsys.fit(ratings, items=movies, model=model, user_col="userId", item_col="movieId")
    return rec.save_pretrained(path)


def in_process(export: str, users: list, threads: int, batch: int, seconds: float) -> float:
    """Users per second of Recommender.recommend(batch of users, k=10), one process."""
    import torch

    from recsys import Recommender
    torch.set_num_threads(threads)
    rec = Recommender.from_pretrained(export)
    rec.recommend(users[:batch], k=10)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rec.recommend(users[n % len(users):n % len(users) + batch] or users[:batch], k=10)
        n += batch
    return n / (time.perf_counter() - t0)


class _Client(asyncio.Protocol):
    """One keep-alive connection sending one request at a time (pre-built bytes) until the
    deadline or the shared budget ends; the answer is complete when Content-Length bytes of
    body have arrived. A protocol rather than streams, so that the load generator's own CPU
    (it shares the machine with the server) stays small."""

    def __init__(self, requests: list, deadline: float, budget: list, lat: list, errors: list, seed: int,
                 done: asyncio.Future):
        self.requests, self.deadline, self.budget, self.lat, self.errors = requests, deadline, budget, lat, errors
        self.rnd, self.done = random.Random(seed), done

    def connection_made(self, transport):
        self.transport = transport
        self._next()

    def _next(self):
        if time.perf_counter() >= self.deadline or self.budget[0] <= 0:
            self.transport.close()
            return
        self.budget[0] -= 1
        self.buf, self.need = b"", None
        self.t0 = time.perf_counter()
        self.transport.write(self.rnd.choice(self.requests))

    def data_received(self, data):
        self.buf += data
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:") + 15
            stop = head.find(b"\r\n", at)
            self.need = end + 4 + int(head[at:stop if stop > 0 else None])
            self.ok = head.startswith(b"http/1.1 200")
        if len(self.buf) >= self.need:
            self.lat.append(time.perf_counter() - self.t0)
            if not self.ok or b'"items"' not in self.buf:
                self.errors.append(self.buf.split(b"\r\n", 1)[0])
            self._next()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


def _requests(users: list) -> list:
    out = []
    for u in users:
        body = json.dumps({"users": u, "k": 10}).encode()
        out.append(b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return out


async def _load(port: int, users: list, clients: int, seconds: float, max_requests: int):
    loop = asyncio.get_running_loop()
    lat, errors, budget, requests = [], [], [max_requests], _requests(users)
    t0 = time.perf_counter()
    done = [loop.create_future() for _ in range(clients)]
    for s, fut in enumerate(done):
        await loop.create_connection(lambda s=s, fut=fut: _Client(requests, t0 + seconds, budget, lat, errors, s, fut),
                                     "127.0.0.1", port)
    await asyncio.gather(*done)
    return lat, errors, time.perf_counter() - t0


def serve(export: str, extra: list[str], checkout: str = ROOT) -> tuple[subprocess.Popen, int]:
    """serve.py of `checkout` (its own package first on the path) on a free 127.0.0.1 port, once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    p = subprocess.Popen([sys.executable, "serve.py", f"export={export}", f"port={port}", "event_log=null",
                          "log_level=warning", *extra], cwd=checkout, env=env)
    import urllib.request
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)
            return p, port
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"{checkout}: serve.py exited with {p.returncode}")
            time.sleep(0.3)
    p.kill()
    raise SystemExit("server not ready within 180 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="itemknn")
    ap.add_argument("--export", default=None, help="an export dir (default: fit --model on MovieLens, cached in /tmp)")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--wait-ms", type=float, default=None, help="max_batch_wait_ms (default: configs/serve.yaml's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--serve", default="", help="extra serve.py settings, e.g. 'workers=2 threads=1'")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of every setting, in-process reference included; the table gives medians")
    a = ap.parse_args()
    export = export_for(a.model, a.export or f"/tmp/recsys_serve_load_{a.model}")
    from recsys import Recommender
    users = list(Recommender.from_pretrained(export).users.ids)
    extra = a.serve.split()
    refs = []                             # per round: in-process users/s at batch 64
    runs: dict[tuple, list] = {}          # (mode, load) -> per round (requests, users/s, p50, p99, errors)
    for rnd in range(a.repeats):
        for b in (1, 64):
            rate = in_process(export, users, 1, b, a.seconds / 2)
            runs.setdefault(("in-process recommend", f"batch {b}, 1 thread"), []).append(("-", rate, None, None, 0))
        ref = rate                                          # batch 64: this round's reference
        refs.append(ref)
        for mode, more in (("HTTP, micro-batching", [] if a.wait_ms is None else [f"max_batch_wait_ms={a.wait_ms}"]),
                           ("HTTP, no batching", ["max_batch_users=1"])):
            p, port = serve(export, extra + more)
            try:
                asyncio.run(_load(port, users, 4, 1.0, 200))                       # warm-up
                for c in [int(x) for x in a.clients.split(",")]:
                    lat, errors, wall = asyncio.run(_load(port, users, c, a.seconds, a.max_requests))
                    ms = np.asarray(lat) * 1000
                    runs.setdefault((mode, f"{c} clients"), []).append(
                        (len(lat), len(lat) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                         len(errors)))
                    print(rnd, mode, c, f"{len(lat) / wall:.0f} users/s, {len(lat) / wall / ref:.0%} of in-process",
                          flush=True)
            finally:
                p.terminate()
                p.wait(30)
    med = lambda xs: None if xs[0] is None else float(np.median(xs))
    cmd = " ".join(sys.argv[1:])
    lines = [f"# serve_load: {a.model} export of ml-latest-small ({len(users)} users), top-10 for one user "
             f"per request", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared; load average "
             f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}. Command: "
             f"`python benchmarks/serve_load.py {cmd}`. Server settings: `{a.serve or 'configs/serve.yaml'}`. "
             f"{a.repeats} round(s); each figure is the median over rounds, the ratio is each round's "
             f"users/s over that round's in-process batch 64 (range over rounds in brackets).", "",
             "| setting | load | requests | users/s | p50 ms | p99 ms | errors | vs in-process batch 64 |",
             "|---|---|---|---|---|---|---|---|"]
    for (mode, load), rs in runs.items():
        n = rs[0][0] if rs[0][0] == "-" else int(np.median([r[0] for r in rs]))
        rate, p50, p99 = (med([r[i] for r in rs]) for i in (1, 2, 3))
        err = sum(r[4] for r in rs)
        ratios = [r[1] / ref for r, ref in zip(rs, refs)]          # each round against its own reference
        f = lambda x: "-" if x is None else f"{x:.1f}"
        span = f" ({min(ratios):.0%}-{max(ratios):.0%})" if len(rs) > 1 else ""
        lines.append(f"| {mode} | {load} | {n} | {rate:.0f} | {f(p50)} | {f(p99)} | {err} | "
                     f"{float(np.median(ratios)):.0%}{span} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
