"""Quality of every model variant under one protocol: runs `train.py` once per variant (each in
its own run folder) and prints a Markdown table of the test metrics from each metrics.json.

    python benchmarks/quality.py                          # default protocol, memory-based models
    python benchmarks/quality.py --learned                # ... and the learned ones (~2 min each)
    python benchmarks/quality.py --extra experiment=random80 data.valid_ratio=0
    python benchmarks/quality.py --learned --extra experiment=newusers     # new-user NDCG@10
    python benchmarks/quality.py --learned --extra experiment=leave_last   # next-item (HR@10 = Recall@10)

Extra arguments are Hydra overrides given to every run. Runs go under outputs/quality/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEMORY = {
    "most popular": ["model=popularity"],
    "content KNN (TF-IDF item-item, k 100)": ["model=content_knn"],
    "UserKNN (cosine, k 50)": ["model=userknn"],
    "ItemKNN (cosine, k 100)": ["model=itemknn"],
    "EASE (lambda 200)": ["model=ease"],
    "blend EASE + content KNN (max norm, alpha 0.8)": ["model=blend"],
    "EASE with side information (side 6)": ["model=ease_side"],
    "blend ItemKNN + content KNN (max norm, alpha 0.8)": ["model=blend", "~model.first",
                                                          "+model.first.kind=itemknn", "+model.first.k=100"],
}
LEARNED = {
    "learned content": ["model=content"],
    "learned collaborative (MF)": ["model=collaborative"],
    "learned hybrid, alpha 0.5": ["model=hybrid"],
    "sequence (causal transformer over item tokens)": ["model=sequence"],
}


def run(name: str, overrides: list[str], extra: list[str], out_root: str) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in name)[:60]
    run_dir = os.path.join(out_root, "_".join(x.replace("=", "-").replace("/", "") for x in extra) or "default", slug)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *overrides, *extra, f"hydra.run.dir={run_dir}",
           "logger=none", "trainer.enable_progress_bar=false"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        m = json.load(f)
    m["wall_s"] = time.perf_counter() - t0
    m["cmd"] = "python train.py " + " ".join([*overrides, *extra])
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--learned", action="store_true", help="also train the learned variants")
    ap.add_argument("--only", help='subset of variant names, separated by |')
    ap.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "quality"))
    a = ap.parse_args()
    variants = {**MEMORY, **(LEARNED if a.learned else {})}
    if a.only:
        keep = set(a.only.split("|"))
        variants = {k: v for k, v in variants.items() if k in keep}
    print("| model | NDCG@10 | Recall@10 | Recall@20 | cold-item Recall@20 | new-user NDCG@10 | coverage@10 | novelty@10 | wall s | command |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ov in variants.items():
        m = run(name, ov, a.extra, a.out)
        if "error" in m:
            print(f"| {name} | — | — | — | — | — | — | — | — | {m['error']} |", flush=True)
            continue
        cold = m.get("test/cold_items/recall@20", float("nan"))
        new = m.get("test/new_users/ndcg@10", float("nan"))
        print(f"| {name} | {m['test/ndcg@10']:.4f} | {m['test/recall@10']:.4f} | {m['test/recall@20']:.4f} | "
              f"{cold:.4f} | {new:.4f} | {m.get('test/coverage@10', float('nan')):.3f} | {m.get('test/novelty@10', float('nan')):.2f} | "
              f"{m['wall_s']:.0f} | `{m['cmd']}` |", flush=True)


if __name__ == "__main__":
    main()
