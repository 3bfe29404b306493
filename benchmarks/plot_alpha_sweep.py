"""Table and plot of an alpha sweep made by

    python train.py -m 'model.alpha=0,0.25,0.5,0.75,1' hydra.sweep.dir=SWEEP

    python benchmarks/plot_alpha_sweep.py SWEEP [docs/alpha_sweep.png]

Reads SWEEP/<job>/metrics.json and SWEEP/<job>/.hydra/overrides.yaml, prints a Markdown table
(alpha, test NDCG@10, Recall@10, Recall@20, best validation NDCG@10) and writes the PNG.
"""
from __future__ import annotations

import json
import os
import sys

import yaml


def load(sweep: str) -> list[dict]:
    rows = []
    for job in sorted(os.listdir(sweep)):
        mpath = os.path.join(sweep, job, "metrics.json")
        opath = os.path.join(sweep, job, ".hydra", "overrides.yaml")
        if not os.path.exists(mpath):
            continue
        with open(opath) as f:
            overrides = dict(o.split("=", 1) for o in yaml.safe_load(f))
        with open(mpath) as f:
            m = json.load(f)
        rows.append({"alpha": float(overrides["model.alpha"]), **m})
    return sorted(rows, key=lambda r: r["alpha"])


def main(sweep: str, png: str = "docs/alpha_sweep.png") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(sweep)
    print("| alpha | test NDCG@10 | test Recall@10 | test Recall@20 | best val NDCG@10 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['alpha']:.2f} | {r['test/ndcg@10']:.4f} | {r['test/recall@10']:.4f} | "
              f"{r['test/recall@20']:.4f} | {r['best/val/ndcg@10']:.4f} |")
    a = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(a, [r["test/ndcg@10"] for r in rows], "o-", label="test NDCG@10")
    ax.plot(a, [r["test/recall@20"] for r in rows], "s--", label="test Recall@20")
    ax.set_xlabel("alpha (0 = content only, 1 = collaborative only)")
    ax.set_ylabel("metric")
    ax.set_title("Hybrid alpha sweep, ml-latest-small")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(*sys.argv[1:])
