"""Ranking users who are not in the model (`Recommender.recommend_for_history`: fold-in and
content profile, no retraining) from an export, timed in this process:

    python benchmarks/new_user_speed.py --export outputs/DATE/TIME_hybrid/export --users 1024
    PYTHONPATH=/tmp/old_tree python benchmarks/new_user_speed.py --export ...   # another version

The histories are the training histories of the export's first --users known users (item ids),
handed over as if the users were new; top 10, given items left out. Prints the median of
--repeats calls (after one warm-up) and the users per second.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import recsys
    from recsys import Recommender
    rec = Recommender.from_pretrained(a.export)
    s = rec.scorer
    ids = rec.items.ids
    ip, ix = s.hist_indptr, s.hist_indices
    hists = [[ids[j] for j in ix[ip[u]:ip[u + 1]].tolist()] for u in range(min(a.users, len(ip) - 1))]
    rec.recommend_for_history(hists[:8], k=10)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        rec.recommend_for_history(hists, k=10)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"{os.path.dirname(recsys.__file__)}: {len(hists)} histories (mean {sum(map(len, hists)) / len(hists):.0f} items), "
          f"{s.config.variant}, {s.config.n_items} items: median {med:.3f} s, {len(hists) / med:,.0f} users/s", flush=True)


if __name__ == "__main__":
    main()
