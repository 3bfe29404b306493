"""Fit + full-ranking speed and peak memory of recsys' memory-based models against the dense
tutorial recipe and `implicit` (optional: pip install implicit scikit-learn).

    python benchmarks/knn_speed.py --data ml            # ml-latest-small (all ratings positive)
    python benchmarks/knn_speed.py --data synth         # power law, 50,000 users x 20,000 items
    python benchmarks/knn_speed.py --data synth --methods recsys_itemknn,implicit_cosine

Each method runs in its own subprocess (so its peak RSS is its own), on the same data and the
same number of threads (--threads, default 2), libraries imported before the clock starts.
"recommend" = top-10 for every user with the user's training items excluded. --repeats N runs
N interleaved rounds; the Markdown table shows medians (peak RSS: the largest) and the ratio of
each median total to --base's (default implicit_cosine).
recsys_itemknn_history scores like implicit's ItemItemRecommender (same definition).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["recsys_itemknn", "recsys_itemknn_history", "recsys_userknn", "recsys_ease", "implicit_cosine", "implicit_als", "tutorial_dense"]


def load(data: str, seed: int = 0):
    """(users (N,), items (N,), n_users, n_items) of unique positive pairs."""
    if data == "ml":
        import pandas as pd
        df = pd.read_csv(os.path.join(ROOT, "data", "ml-latest-small", "ratings.csv"))
        u, uu = pd.factorize(df["userId"])
        i, ii = pd.factorize(df["movieId"])
        return u.astype(np.int64), i.astype(np.int64), len(uu), len(ii)
    rng = np.random.default_rng(seed)
    U, I, N = 50_000, 20_000, 2_700_000
    p = 1.0 / np.arange(1, I + 1) ** 0.9            # item popularity: Zipf-like
    p /= p.sum()
    act = (rng.pareto(1.5, U) + 1) * 20             # user activity: Pareto
    act = (act * N / act.sum()).astype(np.int64) + 1
    u = np.repeat(np.arange(U), act)
    i = rng.choice(I, len(u), p=p)
    key = np.unique(u * I + i)
    return key // I, key % I, U, I


def run_one(method: str, data: str, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    users, items, U, I = load(data)
    out = {"method": method, "nnz": int(len(users))}
    # libraries are imported before the clock starts (fit time is not import time)
    if method.startswith("recsys_"):
        import warnings
        warnings.filterwarnings("ignore")
        from recsys.models.memory import MemoryConfig
        from recsys.models.registry import fit_memory
        from recsys.eval.ranking import topk
        from recsys.sparse.csr import csr_from_pairs
    elif method.startswith("implicit_"):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        import scipy.sparse as sp
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import CosineRecommender
    elif method == "tutorial_dense":
        import pandas as pd
        from sklearn.metrics.pairwise import cosine_similarity
    with open("/proc/self/statm") as f:                   # resident memory before the fit: data, libraries
        out["rss_before_gib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    t0 = time.perf_counter()
    if method.startswith("recsys_"):
        indptr, indices, _ = csr_from_pairs(users, items, U)
        indptr, indices = torch.from_numpy(indptr), torch.from_numpy(indices)
        kind = method.split("_")[1]
        # recsys_itemknn_history: implicit's scoring direction (each history item votes for its
        # k neighbours); recsys_itemknn: the default candidate direction (see recsys/models/knn.py)
        direction = "history" if method.endswith("_history") else "candidate"
        cfg = MemoryConfig(kind=kind, n_users=U, n_items=I, k=100 if kind == "itemknn" else 50, lam=200.0,
                           direction=direction)
        model = fit_memory(cfg, indptr, indices)
        out["fit_s"] = time.perf_counter() - t0
        out["fit_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        t1 = time.perf_counter()
        top, _ = topk(model, torch.arange(U), 10, (indptr, indices), chunk_size=1024)
        out["recommend_s"] = time.perf_counter() - t1
    elif method.startswith("implicit_"):
        X = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(U, I))
        model = CosineRecommender(K=100, num_threads=threads) if method == "implicit_cosine" else \
            AlternatingLeastSquares(factors=64, iterations=15, num_threads=threads, random_state=0)
        model.fit(X, show_progress=False)
        out["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ids, _ = model.recommend(np.arange(U), X, N=10, filter_already_liked_items=True)
        out["recommend_s"] = time.perf_counter() - t1
    elif method == "tutorial_dense":
        # the pandas + scikit-learn recipe: dense pivot, dense user-user cosine, dense dot, argsort
        need = (U * I * 8 * 2 + U * U * 8) / 2 ** 30
        out["needs_gib"] = round(need, 1)
        if need > 20:
            raise MemoryError(f"dense user x item + user x user matrices need ~{need:.0f} GiB (> this 24 GiB machine)")
        df = pd.DataFrame({"u": users, "i": items, "r": 1.0})
        M = df.pivot_table(index="u", columns="i", values="r", fill_value=0.0)
        S = cosine_similarity(M.values)
        out["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores = S @ M.values
        scores[M.values > 0] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :10]
        out["recommend_s"] = time.perf_counter() - t1
    out["total_s"] = out["fit_s"] + out["recommend_s"]
    out["users_per_s"] = U / out["recommend_s"]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="ml", choices=["ml", "synth"])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the table shows medians")
    ap.add_argument("--base", default="implicit_cosine", help="method the total-time ratios are taken against")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        try:
            print(json.dumps(run_one(a.one, a.data, a.threads)))
        except (MemoryError, ImportError) as e:
            print(json.dumps({"method": a.one, "error": f"{type(e).__name__}: {e}"}))
        return
    methods = a.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(a.repeats):                    # rounds interleave the methods: drift hits all alike
        for m in methods:
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            res = subprocess.run([sys.executable, __file__, "--data", a.data, "--threads", str(a.threads), "--one", m],
                                 capture_output=True, text=True, env=env)
            line = (res.stdout.strip().splitlines() or ["{}"])[-1]
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                r = {"method": m, "error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
            runs[m].append(r)
            print(json.dumps(r), file=sys.stderr)

    def med(rs: list[dict], key: str) -> float:
        return float(np.median([r[key] for r in rs]))

    ok = {m: [r for r in rs if "total_s" in r] for m, rs in runs.items()}
    base = a.base if ok.get(a.base) else None
    print(f"| method ({a.data}, {a.threads} threads, median of {a.repeats}) | fit s | recommend s | total s | "
          f"users/s | peak RSS GiB (before fit) | total vs {base or '—'} |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        if not ok[m]:
            print(f"| {m} | — | — | — | — | — | {runs[m][-1].get('error', 'failed')} |")
            continue
        rs = ok[m]
        ratio = f"{med(rs, 'total_s') / med(ok[base], 'total_s'):.2f}x" if base else "—"
        print(f"| {m} | {med(rs, 'fit_s'):.2f} | {med(rs, 'recommend_s'):.2f} | {med(rs, 'total_s'):.2f} | "
              f"{med(rs, 'users_per_s'):,.0f} | {max(r['peak_rss_gib'] for r in rs):.2f} "
              f"({med(rs, 'rss_before_gib'):.2f}) | {ratio} |")

if __name__ == "__main__":
    main()
