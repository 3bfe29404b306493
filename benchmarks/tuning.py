"""Tuned + refit against default + refit, side by side on one protocol (issue: model selection).

For each model: `python train.py MODEL search.trials=N` (search on the validation carve-out of
train, refit of the winner on all of train, test once) and `python train.py MODEL` (the config's
defaults, refit the same way), each in its own run folder under outputs/tuning/. Prints a
Markdown table (test NDCG@10 and Recall@20, the winning parameters, the search's seconds) and
writes the rows to benchmarks/results/tuning_<protocol>.json.

    python benchmarks/tuning.py                                   # experiment=random80, all models
    python benchmarks/tuning.py --models ease itemknn --trials 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = {"ease": 20, "itemknn": 30, "userknn": 30, "blend": 20, "hybrid": 12}


def run(args: list[str], out: str) -> dict:
    if not os.path.exists(os.path.join(out, "metrics.json")):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={out}", "logger=none",
                              "trainer.enable_progress_bar=false", "report.projector=false"],
                             cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")
        wall = time.perf_counter() - t0
        m = json.load(open(os.path.join(out, "metrics.json")))
        m["wall_seconds"] = wall
        json.dump(m, open(os.path.join(out, "metrics.json"), "w"))
    return json.load(open(os.path.join(out, "metrics.json")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(TRIALS))
    ap.add_argument("--trials", type=int, default=None, help="trials per model (default: TRIALS)")
    ap.add_argument("--experiment", default="random80")
    a = ap.parse_args()
    root = os.path.join(ROOT, "outputs", "tuning", a.experiment)
    rows = []
    for model in a.models:
        base = [f"experiment={a.experiment}", f"model={model}"]
        default = run(base, os.path.join(root, f"{model}_default"))
        n = a.trials or TRIALS[model]
        tuned = run(base + [f"search.trials={n}"], os.path.join(root, f"{model}_tuned{n}"))
        params = {k[len("search/params."):]: v for k, v in tuned.items() if k.startswith("search/params.")}
        rows.append({"model": model, "trials": n,
                     "default_ndcg@10": default["test/ndcg@10"], "default_recall@20": default["test/recall@20"],
                     "tuned_ndcg@10": tuned["test/ndcg@10"], "tuned_recall@20": tuned["test/recall@20"],
                     "val_best": tuned["search/best_value"], "search_seconds": tuned["search/seconds"],
                     "wall_seconds": tuned["wall_seconds"], "params": params})
        r = rows[-1]
        print(f"| {model} | {r['default_ndcg@10']:.4f} | {r['tuned_ndcg@10']:.4f} | {r['default_recall@20']:.4f} | "
              f"{r['tuned_recall@20']:.4f} | {n} trials, {r['search_seconds']:.0f} s | "
              + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()) + " |",
              flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", f"tuning_{a.experiment}.json"), "w") as f:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
