"""Large synthetic data: load time, training throughput, full-ranking throughput and peak RSS of
the learned hybrid and ItemKNN, next to `implicit` ALS (optional) on the same data and threads.

    python benchmarks/scale.py --users 1000000 --items 100000 --interactions 20000000
    python benchmarks/scale.py --users 200000 --items 40000 --interactions 4000000 --phases load,train

The data (power-law user activity and item popularity, every pair a positive; item text of 3-8
words from 20,000, drawn around a per-item topic) is written once as Parquet under --dir and
read back through recsys.data.prepare.prepare_files (pyarrow). Each phase runs in its own subprocess so
its peak RSS (ru_maxrss) is its own:

    load     prepare_files: read Parquet, vocabularies, CSR, token bags (seconds, RSS)
    train    the learned hybrid (dim 64, softmax loss with --n-neg shared negatives, batch --batch-size,
             --batching interactions | users)
             through Lightning for --train-batches batches: interactions per second over the
             whole fit and from the median step (wall time of each batch, the first 3 left out)
             (--sparse: lazy Adam on the large tables, model.optim.sparse=true; --max-history K:
             training profiles pool at most K sampled history items, model.optim.max_history)
    rank     top-10 with seen items masked for --rank-users users (the first ones), for the
             collaborative and hybrid scorers, next to the bare torch.mm + torch.topk floor over
             the same shapes; users per second and the ratio to the floor
    itemknn  ItemKNN fit (cosine, k 100) + top-10 for --rank-users users
    als      implicit ALS (factors 64, --als-iters iterations): seconds per iteration,
             interactions per second, and top-10 for --rank-users users
    ease_lowrank  EASE from the Gram matrix's top --rank eigenpairs (models/ease_lowrank.py): fit
             seconds and peak RSS, then top-10 with seen items masked for --rank-users users next
             to the bare mm + topk floor over the same (users, rank) @ (rank, items) shapes
    recsys_als  recsys's ALS (train/als.py, model=als: dim 64, 3 CG steps a side, the same
             --als-iters iterations on the same threads, the exact objective not computed):
             seconds per iteration, interactions per second, peak RSS
    sequence the sequence model (dim 64, 2 blocks, max_len 200, sampled softmax with --n-neg
             popularity negatives, batches of --seq-batch users) through Lightning for
             --train-batches batches: training events (predicted next items) per second, then
             top-10 with seen items masked for --rank-users users through the transformer, the
             time to cache every user's last state (cache_users, once per model), then top-10
             from the cached states next to the bare mm + topk floor over the same shapes
    export   a learned hybrid export (dim 64, initial weights: serving costs do not depend on
             them) written with save_pretrained to --export-dir (default DIR/export_hybrid), for
             `python benchmarks/serve_load.py --export DIR/export_hybrid`: seconds, size, RSS
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PHASES = ("load", "train", "rank", "itemknn", "als", "recsys_als")     # and "export", on request


def generate(d: str, U: int, I: int, N: int, seed: int = 0) -> None:
    import pandas as pd
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "train.parquet")):
        return
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, I + 1) ** 0.9
    p /= p.sum()
    act = (rng.pareto(1.5, U) + 1)
    act = (act * N / act.sum()).astype(np.int64) + 1
    u = np.repeat(np.arange(U, dtype=np.int64), act)
    i = rng.choice(I, len(u), p=p).astype(np.int64)
    key = np.unique(u * I + i)
    u, i = key // I, key % I
    test = rng.random(len(u)) < 0.05
    for name, m in (("train", ~test), ("test", test)):
        pd.DataFrame({"user": u[m], "item": i[m]}).to_parquet(os.path.join(d, f"{name}.parquet"), index=False)
    words = 20_000
    topic = rng.integers(0, words, I)
    n = rng.integers(3, 9, I)
    text = [" ".join(f"w{(t + int(o)) % words}" for o in rng.normal(0, 50, k).astype(int)) for t, k in zip(topic, n)]
    pd.DataFrame({"item": np.arange(I), "text": text}).to_parquet(os.path.join(d, "items.parquet"), index=False)


def _prep(d: str):
    from recsys.data.prepare import prepare_files
    return prepare_files(train=os.path.join(d, "train.parquet"), test=os.path.join(d, "test.parquet"),
                         items=os.path.join(d, "items.parquet"), valid_ratio=0.0,
                         tokens={"kind": "word", "min_count": 2})


def _timed_fit(module, loader, batches: int, on_batch=None, precision: str = "32-true") -> tuple[float, list[float]]:
    """One epoch of at most `batches` batches through Lightning on the CPU: (seconds, each
    batch's step seconds); on_batch(batch) is called at every batch's start."""
    import lightning as L
    steps = []

    class StepTimes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if on_batch is not None:
                on_batch(batch)
            self.t = time.perf_counter()

        def on_train_batch_end(self, *args):
            steps.append(time.perf_counter() - self.t)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                        callbacks=[StepTimes()], precision=precision)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - t0, steps


def _floor(U, V, chunk: int = 1024) -> float:
    """Seconds of the bare floor: torch.mm of (chunk, D) user rows against V^T, then top-10."""
    import torch
    buf = torch.empty(chunk, V.shape[0])
    t0 = time.perf_counter()
    for s0 in range(0, len(U), chunk):
        e = min(len(U), s0 + chunk)
        torch.topk(torch.mm(U[s0:e], V.T, out=buf[:e - s0]), 10, dim=1)
    return time.perf_counter() - t0


def phase(name: str, a) -> dict:
    import torch
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    out: dict = {}
    t0 = time.perf_counter()
    prep = _prep(a.dir)
    out["load_s"] = time.perf_counter() - t0
    out["n_train"] = int(len(prep.train))
    users = torch.arange(min(a.rank_users, prep.n_users))
    if name == "train":
        import lightning as L
        from recsys.train.build import build_scorer, eval_sets
        from recsys.train.module import RecsysModule, train_loader
        L.seed_everything(0)
        scorer = build_scorer(prep, variant="hybrid", dim=64)
        kw = {"max_history": a.max_history} if a.max_history else {}
        module = RecsysModule(scorer, eval_sets(prep), loss="softmax", n_neg=a.n_neg, lr=0.005, sparse=a.sparse, **kw)
        loader = train_loader(prep.train, a.batch_size, 0, a.batching, a.user_run)
        s, steps = _timed_fit(module, loader, a.train_batches)
        med = statistics.median(steps[3:] or steps)
        B = a.batch_size
        out.update(train_s=s, batches=a.train_batches, sparse=a.sparse, max_history=a.max_history,
                   batching=a.batching, user_run=a.user_run, batch_size=B, n_neg=a.n_neg,
                   interactions_per_s=a.train_batches * B / s, median_step_s=med,
                   median_interactions_per_s=B / med, epoch_s_estimate=len(prep.train) * med / B)
    elif name == "rank":
        from recsys.train.build import build_scorer, csr
        from recsys.eval.ranking import topk
        seen = csr(prep.train, prep.n_users)
        for variant in ("collaborative", "hybrid"):
            torch.manual_seed(0)
            sc = build_scorer(prep, variant=variant, dim=64).eval()
            ts, floor = [], []
            Uemb, V = sc.user_emb.weight.detach(), sc.item_emb.weight.detach()
            for _ in range(a.repeats):
                floor.append(_floor(Uemb[:len(users)], V))
                t0 = time.perf_counter()
                with torch.no_grad():
                    topk(sc, users, 10, seen, chunk_size=1024)
                ts.append(time.perf_counter() - t0)
            m, f = statistics.median(ts), statistics.median(floor)
            out[variant] = {"rank_s": m, "users_per_s": len(users) / m, "floor_s": f, "ratio_to_floor": m / f}
    elif name == "ease_lowrank":
        from recsys.eval.ranking import topk
        from recsys.models.memory import MemoryConfig
        from recsys.models.registry import fit_memory
        from recsys.train.build import csr
        seen = csr(prep.train, prep.n_users)
        cfg = MemoryConfig(kind="ease_lowrank", n_users=prep.n_users, n_items=prep.n_items, rank=a.rank)
        t0 = time.perf_counter()
        m = fit_memory(cfg, *seen)
        out["fit_s"] = time.perf_counter() - t0
        out["fit_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        ts, floor = [], []
        Z = torch.randn(len(users), m.lr_user.shape[1])        # the floor: the same (b, r) @ (r, I) shapes
        for _ in range(a.repeats):
            floor.append(_floor(Z, m.lr_item))
            t0 = time.perf_counter()
            with torch.no_grad():
                topk(m, users, 10, seen, chunk_size=1024)
            ts.append(time.perf_counter() - t0)
        r, f = statistics.median(ts), statistics.median(floor)
        out.update(rank=int(m.lr_user.shape[1]), rank_s=r, users_per_s=len(users) / r, floor_s=f, ratio_to_floor=r / f)
    elif name == "sequence":
        import lightning as L
        from recsys.eval.ranking import topk
        from recsys.train.build import build_sequence, eval_sets
        from recsys.train.sequence_module import SequenceModule, sequence_loader
        L.seed_everything(0)
        model = build_sequence(prep)
        module = SequenceModule(model, eval_sets(prep), loss="sampled", n_neg=a.n_neg)
        events = []
        starts = torch.diff(model.seq_indptr).clamp(max=model.config.max_len + 1) - 1     # (U,) positions
        loader = sequence_loader(model.seq_indptr, a.seq_batch, 0, model.config.max_len, a.seq_events)
        s, steps = _timed_fit(module, loader, a.train_batches,
                              lambda batch: events.append(int(starts[batch[0]].clamp(min=0).sum())), a.precision)
        out.update(train_s=s, batches=len(steps), events=sum(events), events_per_s=sum(events) / s,
                   step_events_per_s=sum(events) / sum(steps), n_neg=a.n_neg, seq_batch=a.seq_batch, seq_events=a.seq_events,
                   precision=a.precision,
                   epoch_s_estimate=int(starts.clamp(min=0).sum()) * sum(steps) / max(sum(events), 1))
        model.eval()
        seen = model.seq_indptr, model.seq_indices
        t0 = time.perf_counter()
        topk(model, users, 10, seen, chunk_size=1024)              # through the transformer
        out["rank_encoding_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.cache_users()                                          # every user's last state, once
        out["cache_users_s"] = time.perf_counter() - t0
        ts, floor = [], []
        H = torch.randn(len(users), 64)
        for _ in range(a.repeats):
            with torch.no_grad():
                floor.append(_floor(H, model.item_table()))
                t0 = time.perf_counter()
                topk(model, users, 10, seen, chunk_size=1024)
                ts.append(time.perf_counter() - t0)
        m, f = statistics.median(ts), statistics.median(floor)
        out["rank"] = {"rank_s": m, "users_per_s": len(users) / m, "floor_s": f, "ratio_to_floor": m / f}
    elif name == "itemknn":
        from recsys.train.build import build_memory, csr
        from recsys.eval.ranking import topk
        t0 = time.perf_counter()
        m = build_memory(prep, {"kind": "itemknn", "k": 100})
        out["fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        topk(m, users, 10, csr(prep.train, prep.n_users), chunk_size=1024)
        out["rank_s"] = time.perf_counter() - t0
        out["users_per_s"] = len(users) / out["rank_s"]
    elif name == "export":
        from recsys.serve.recommender import Recommender
        from recsys.train.build import build_scorer, csr
        torch.manual_seed(0)
        scorer = build_scorer(prep, variant="hybrid", dim=64).eval()
        rec = Recommender(scorer, prep.users, prep.items, prep.tokens, prep.tokenizer, csr(prep.train, prep.n_users),
                          torch.from_numpy(prep.bags.idf), prep.item_titles,
                          {"text_fields": prep.text_fields, "events_through": prep.events_through,
                           "note": "benchmarks/scale.py export phase: initial weights, for serving benchmarks"},
                          prep.item_attributes)
        path = a.export_dir or os.path.join(a.dir, "export_hybrid")
        t0 = time.perf_counter()
        rec.save_pretrained(path)
        out["export_s"] = time.perf_counter() - t0
        out["export_mb"] = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2 ** 20
        t0 = time.perf_counter()
        Recommender.from_pretrained(path)
        out["from_pretrained_s"] = time.perf_counter() - t0
        out["path"] = path
    elif name == "recsys_als":
        from recsys.sparse.csr import csr
        from recsys.train.als import als_iteration, item_bags
        from recsys.train.build import build_scorer
        torch.manual_seed(0)
        scorer = build_scorer(prep, variant="mf_tokens" if a.als_tokens else "collaborative", dim=64,
                              item_bias=False, init_std=0.01)
        t0 = time.perf_counter()
        by_user, by_item = csr(prep.train, prep.n_users), csr(prep.train[:, ::-1], prep.n_items)
        bags = item_bags(scorer) if a.als_tokens else None
        out["csr_s"] = time.perf_counter() - t0
        times = []
        for _ in range(a.als_iters):             # the sweeps alone (the objective not computed)
            t0 = time.perf_counter()
            als_iteration(scorer, by_user, by_item, alpha=10.0, reg=0.05, steps=3, bags=bags, loss=False,
                          token_steps=a.token_steps)
            times.append(time.perf_counter() - t0)
        out.update(fit_s=sum(times), iter_s=sum(times) / len(times), iter_times=times,
                   interactions_per_s=len(prep.train) * len(times) / sum(times))
    elif name == "als":
        import scipy.sparse as sp
        from implicit.als import AlternatingLeastSquares
        X = sp.csr_matrix((np.ones(len(prep.train), dtype=np.float32), (prep.train[:, 0], prep.train[:, 1])),
                          shape=(prep.n_users, prep.n_items))
        model = AlternatingLeastSquares(factors=64, iterations=a.als_iters, num_threads=a.threads,
                                        random_state=0, calculate_training_loss=False)
        t0 = time.perf_counter()
        model.fit(X, show_progress=False)
        s = time.perf_counter() - t0
        out.update(fit_s=s, iter_s=s / a.als_iters, interactions_per_s=len(prep.train) * a.als_iters / s)
        u = users.numpy()
        t0 = time.perf_counter()
        model.recommend(u, X[u], N=10, filter_already_liked_items=True)
        out["rank_s"] = time.perf_counter() - t0
        out["users_per_s"] = len(u) / out["rank_s"]
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--interactions", type=int, default=20_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batches", type=int, default=200)
    ap.add_argument("--rank-users", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--als-iters", type=int, default=3)
    ap.add_argument("--rank", type=int, default=512, help="ease_lowrank: eigenpairs kept")
    ap.add_argument("--als-tokens", action="store_true", help="recsys_als: model=als_tokens (item rows + token table)")
    ap.add_argument("--token-steps", type=int, default=None, help="recsys_als --als-tokens: CG steps of the token table (default 3)")
    ap.add_argument("--sparse", action="store_true", help="train with model.optim.sparse=true (lazy Adam on the large tables)")
    ap.add_argument("--max-history", type=int, default=0, help="train with model.optim.max_history (0: whole histories)")
    ap.add_argument("--batching", default="interactions", choices=["interactions", "users"],
                    help="train: model.optim.batching (users: each user's pairs in one batch)")
    ap.add_argument("--batch-size", type=int, default=1024, help="train: interactions per batch")
    ap.add_argument("--user-run", type=int, default=0, help="train: model.optim.user_run (batching users: runs of at most this many pairs)")
    ap.add_argument("--n-neg", type=int, default=1024, help="train, sequence: shared negatives per batch")
    ap.add_argument("--seq-batch", type=int, default=128, help="sequence: users per batch")
    ap.add_argument("--precision", default="32-true",
                    help="sequence: Lightning's trainer.precision (bf16-mixed: bfloat16 matmuls where the CPU has them)")
    ap.add_argument("--seq-events", type=int, default=0,
                    help="sequence: padded positions per batch (model.optim.batch_events; 0: --seq-batch users)")
    ap.add_argument("--export-dir", default=None, help="export phase: where to write (default DIR/export_hybrid)")
    ap.add_argument("--phase-timeout", type=int, default=1200, help="seconds per phase before it is reported as timed out")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.dir = a.dir or os.path.join(ROOT, "outputs", "scale", f"{a.users}x{a.items}x{a.interactions}")
    if a.phase:
        print(json.dumps(phase(a.phase, a)))
        return
    t0 = time.perf_counter()
    generate(a.dir, a.users, a.items, a.interactions)
    print(f"data: {a.dir} (generated or reused in {time.perf_counter() - t0:.0f} s)", flush=True)
    out = os.path.join(a.dir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {}     # other phases' last results kept
    for ph in a.phases.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--phase", ph, "--dir", a.dir]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=a.phase_timeout)
        except subprocess.TimeoutExpired:
            results[ph] = {"error": f"timed out after {a.phase_timeout} s"}
            print(ph, json.dumps(results[ph]), flush=True)
            continue
        if res.returncode != 0:
            results[ph] = {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            results[ph] = json.loads(res.stdout.strip().splitlines()[-1])
        print(ph, json.dumps(results[ph]), flush=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
