"""Full-ranking speed of the learned scorer against the bare floor, side by side in one process:
top-10 for every user (seen items masked) through recsys.eval.ranking.topk and through the public
Recommender.recommend (user ids in, item ids out), versus a bare loop of
torch.mm(user chunk, item table^T) + torch.topk over the same shapes (no masking, no
standardisation, nothing else). Reports medians of --repeats runs and the ratio.

    python benchmarks/ranking_speed.py                          # 50,000 users x 20,000 items, dim 64
    python benchmarks/ranking_speed.py --users 100000 --items 50000 --variant hybrid
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import os

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--history", type=int, default=40, help="training items per user (masked)")
    ap.add_argument("--variant", default="collaborative", choices=["collaborative", "content", "hybrid"])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from recsys.eval.ranking import topk
    from recsys.models.learned import Scorer, ScorerConfig
    rng = np.random.default_rng(0)
    U, I, D = a.users, a.items, a.dim
    hist_indptr = torch.arange(0, (U + 1) * a.history, a.history)
    hist_indices = torch.from_numpy(np.sort(rng.integers(0, I, (U, a.history)), axis=1).reshape(-1))
    n_tok = 5_000
    tok_indptr = torch.arange(0, (I + 1) * 8, 8)
    tok_indices = torch.from_numpy(rng.integers(0, n_tok, I * 8))
    buffers = {"tok_indptr": tok_indptr, "tok_indices": tok_indices, "tok_weights": torch.rand(I * 8),
               "hist_indptr": hist_indptr, "hist_indices": hist_indices, "item_warm": torch.ones(I, dtype=torch.bool)}
    dev = torch.device(a.device)
    scorer = Scorer(ScorerConfig(n_users=U, n_items=I, n_tokens=n_tok, variant=a.variant, dim=D), buffers).eval().to(dev)
    users = torch.arange(U, device=dev)
    seen = (hist_indptr.to(dev), hist_indices.to(dev))
    emb = scorer.user_emb if hasattr(scorer, "user_emb") else None
    Uemb = emb.weight.detach() if emb is not None else torch.randn(U, D, device=dev)
    V = scorer.item_emb.weight.detach() if emb is not None else torch.randn(I, D, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def bare():
        out = torch.empty(a.chunk, I, device=dev)
        for s in range(0, U, a.chunk):
            e = min(U, s + a.chunk)
            torch.topk(torch.mm(Uemb[s:e], V.T, out=out[:e - s]), 10, dim=1)

    def ours():
        with torch.no_grad():
            topk(scorer, users, 10, seen, chunk_size=a.chunk)

    from recsys.data.tokenize import WordTokenizer
    from recsys.data.vocab import Vocab
    from recsys.serve.recommender import Recommender
    rec = Recommender(scorer, Vocab(list(range(U))), Vocab(list(range(I))), Vocab([f"t{n}" for n in range(n_tok)]),
                      WordTokenizer(), seen, torch.ones(n_tok))
    ids = list(range(U))

    def api():                        # the public call, ids in and out
        rec.recommend(ids, k=10, chunk_size=a.chunk)

    times = {"bare mm + topk": [], f"recsys {a.variant} (masked)": [], "Recommender.recommend (ids in and out)": []}
    for _ in range(a.repeats):
        for name, f in zip(times, (bare, ours, api)):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
    floor = statistics.median(times["bare mm + topk"])
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{a.threads} threads"
    print(f"| {U:,} users x {I:,} items, dim {D}, {where} | median s | users/s | vs floor |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {U / m:,.0f} | {m / floor:.2f}x |")


if __name__ == "__main__":
    main()
