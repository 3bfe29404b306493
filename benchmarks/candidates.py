"""Candidate ranking and similar items at scale, through the Recommender API.

    python benchmarks/candidates.py                       # 1M users x 100k items, dim 64
    python benchmarks/candidates.py --users 100000 --items 20000 --repeats 5

A learned scorer (hybrid by default) with random weights of the real shapes (the cost does not
depend on the values): --users x --items, 5 tokens per item out of --tokens, 18 training items
per user. Measured, median of --repeats calls each, side by side in one process:

    full       recommend(users, k=10) over the whole catalog
    items=C    recommend(users, k=10, items=C random candidate ids), C = 100 and 1,000
    similar    similar_items(every item, k=10), chunked (chunk 1,024 queries x the catalog),
               seconds for the catalog and peak RSS of the process

for a batch of 1 and of 64 users. The ratio full / items=C says whether candidate ranking costs
in proportion to the candidates rather than to the catalog.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(U: int, I: int, T: int, variant: str, dim: int, seed: int = 0):
    from recsys.data.vocab import Vocab
    from recsys.models.learned import Scorer, ScorerConfig
    from recsys.serve.recommender import Recommender
    from recsys.sparse.csr import csr_from_pairs
    rng = np.random.default_rng(seed)
    per_item, per_user = 5, 18
    tok = rng.integers(0, T, (I, per_item))
    tok_indptr = torch.arange(0, I * per_item + 1, per_item)
    hist_items = rng.integers(0, I, (U, per_user))
    hist_indptr = torch.arange(0, U * per_user + 1, per_user)
    buffers = {"tok_indptr": tok_indptr, "tok_indices": torch.from_numpy(tok.ravel()),
               "tok_weights": torch.full((I * per_item,), 1 / per_item ** 0.5),
               "hist_indptr": hist_indptr, "hist_indices": torch.from_numpy(hist_items.ravel()),
               "item_warm": torch.ones(I, dtype=torch.bool)}
    torch.manual_seed(seed)
    scorer = Scorer(ScorerConfig(n_users=U, n_items=I, n_tokens=T, variant=variant, dim=dim), buffers).eval()
    seen = (hist_indptr, torch.from_numpy(np.sort(hist_items, 1).ravel()))
    return Recommender(scorer, Vocab(range(U)), Vocab(range(I)), Vocab([f"t{t}" for t in range(T)]), None,
                       seen, torch.ones(T))


def median_seconds(fn, repeats: int) -> float:
    fn()                                           # warm: item side, caches
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--variant", default="hybrid")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-similar", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rec = build(a.users, a.items, a.tokens, a.variant, a.dim)
    print(f"{a.variant} scorer {a.users:,} users x {a.items:,} items, dim {a.dim}: built in "
          f"{time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(1)
    rows = []
    for b in (1, 64):
        users = rng.choice(a.users, b, replace=False).tolist()
        full = median_seconds(lambda: rec.recommend(users, k=10), a.repeats)
        line = {"batch": b, "full": full}
        for c in (100, 1000):
            cand = rng.choice(a.items, c, replace=False).tolist()
            line[f"items={c}"] = median_seconds(lambda: rec.recommend(users, k=10, candidates=cand), a.repeats)
        rows.append(line)
    print("| users per call | full catalog (ms) | items=100 (ms) | items=1,000 (ms) | full / items=100 | full / items=1,000 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['full'] * 1e3:.2f} | {r['items=100'] * 1e3:.2f} | {r['items=1000'] * 1e3:.2f} | "
              f"{r['full'] / r['items=100']:.1f}x | {r['full'] / r['items=1000']:.1f}x |")
    if not a.skip_similar:
        t = time.perf_counter()
        ids, sc = rec.similar_items(list(range(a.items)), k=10)
        secs = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(f"similar_items for all {a.items:,} items, k=10: {secs:.1f} s ({a.items / secs:,.0f} items/s), "
              f"shape {ids.shape}; peak RSS of the process {rss:.2f} GB")


if __name__ == "__main__":
    main()
