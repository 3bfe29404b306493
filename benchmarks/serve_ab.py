"""Side-by-side serving throughput: serve.py of several checkouts and/or settings, in interleaved
rounds, 64 clients (one top-10 request each at a time), against in-process batched `recommend`
measured in the same round.

    git worktree add /tmp/base HEAD~3
    python benchmarks/serve_ab.py --arm base=/tmp/base: --arm new=.: --arm new_w1=.:workers=1

An arm is NAME=CHECKOUT:SETTINGS (SETTINGS: serve.py overrides, space separated, may be empty).
Each round measures the in-process reference (batch 64, one torch thread, this checkout's
package), then every arm in order on a fresh server; the table gives each arm's median over
rounds of users/s and of its ratio to its round's reference. The load generator and the export
are benchmarks/serve_load.py's.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", required=True, help="NAME=CHECKOUT:SETTINGS (repeatable)")
    ap.add_argument("--model", default="hybrid")
    ap.add_argument("--export", default=None, help="default: fit --model on MovieLens, cached in /tmp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    arms = []
    for spec in a.arm:
        name, sep, rest = spec.partition("=")
        checkout, sep2, settings = rest.partition(":")
        if not (sep and sep2 and name and checkout):
            raise SystemExit(f"--arm {spec!r}: expected NAME=CHECKOUT:SETTINGS")
        if not os.path.isfile(os.path.join(checkout, "serve.py")):
            raise SystemExit(f"--arm {spec!r}: no serve.py in {checkout}")
        arms.append((name, checkout, settings.split()))
    export = serve_load.export_for(a.model, a.export or f"/tmp/recsys_serve_load_{a.model}")
    from recsys import Recommender
    users = list(Recommender.from_pretrained(export).users.ids)
    refs = []                                  # per round: in-process users/s at batch 64
    res: dict[str, list] = {}                  # arm -> per round (users/s, p99 ms)
    for rnd in range(a.rounds):
        refs.append(serve_load.in_process(export, users, 1, 64, a.seconds / 2))
        for name, checkout, settings in arms:
            p, port = serve_load.serve(export, settings, checkout)
            try:
                asyncio.run(serve_load._load(port, users, 8, 1.0, 10 ** 6))                # warm-up
                lat, errors, wall = asyncio.run(serve_load._load(port, users, a.clients, a.seconds, 10 ** 6))
            finally:
                p.terminate()
                p.wait(30)
            if errors:
                raise SystemExit(f"{name}: {len(errors)} failed requests, first {errors[0]!r}")
            r = len(lat) / wall
            res.setdefault(name, []).append((r, float(np.percentile(lat, 99)) * 1000))
            print(rnd, name, f"{r:.0f} users/s, {r / refs[-1]:.1%} of in-process {refs[-1]:.0f}", flush=True)
    lines = [f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
             f"Command: `python benchmarks/serve_ab.py {' '.join(sys.argv[1:])}`; {a.rounds} interleaved "
             f"rounds, {a.clients} clients, medians over rounds (range in brackets).", "",
             "| arm | settings | users/s | p99 ms | vs in-process batch 64 |", "|---|---|---|---|---|",
             f"| in-process batch 64 | - | {np.median(refs):.0f} | - | 100% |"]
    for name, checkout, settings in arms:
        rates = [x[0] for x in res[name]]
        ratios = [x / ref for x, ref in zip(rates, refs)]
        lines.append(f"| {name} | {' '.join(settings) or 'configs/serve.yaml'} | {np.median(rates):.0f} | "
                     f"{np.median([x[1] for x in res[name]]):.1f} | "
                     f"{np.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%}) |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
