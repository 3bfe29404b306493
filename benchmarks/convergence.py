"""Validation NDCG@10 against wall-clock seconds of training, for each learned variant, with the
memory models' fit time and validation NDCG@10 marked (issue: the learned model's convergence).

    python benchmarks/convergence.py                     # default protocol -> docs/convergence.png
    python benchmarks/convergence.py --extra experiment=random80 --out docs/convergence_random80.png

Each model runs `python train.py model=M` in its own folder under outputs/convergence/ (run one
at a time: the figure is wall-clock). A learned run's curve comes from its TensorBoard events:
every `val/ndcg@10` point at its wall time, minus the time of the run's first event (the
hyperparameters, logged just before training starts). Memory models are one point each: their
`fit/seconds` and `best/val/ndcg@10` from metrics.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNED = ("content", "collaborative", "hybrid")
MEMORY = ("ease", "itemknn")


def run(model: str, extra: list[str], out: str) -> None:
    if os.path.exists(os.path.join(out, "metrics.json")):
        return
    res = subprocess.run([sys.executable, "train.py", f"model={model}", *extra, f"hydra.run.dir={out}",
                          "trainer.enable_progress_bar=false", "report.projector=false"],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"model={model} failed:\n{res.stderr[-3000:]}")


def curve(out: str, tag: str = "val/ndcg@10") -> tuple[list[float], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = sorted(glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*")))
    t0, pts = None, []
    for f in files:
        acc = EventAccumulator(f)
        acc.Reload()
        for t in acc.Tags().get("scalars", []):
            for e in acc.Scalars(t):
                t0 = e.wall_time if t0 is None else min(t0, e.wall_time)
        if tag in acc.Tags().get("scalars", []):
            pts += [(e.wall_time, e.value) for e in acc.Scalars(tag) if e.value == e.value]
    pts.sort()
    return [w - t0 for w, _ in pts], [v for _, v in pts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "convergence.png"))
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tag = "_".join(a.extra).replace("=", "-") or "default"
    root = os.path.join(ROOT, "outputs", "convergence", tag)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = {}
    for m in LEARNED:
        out = os.path.join(root, m)
        run(m, a.extra, out)
        x, y = curve(out)
        ax.plot(x, y, marker="o", ms=3, label=f"learned {m}")
        best = max(range(len(y)), key=y.__getitem__)
        rows[m] = {"best_val_ndcg@10": y[best], "seconds_to_best": x[best], "epochs": len(y)}
    for m, mk, col in zip(MEMORY, ("*", "s"), ("black", "crimson")):
        out = os.path.join(root, m)
        run(m, a.extra + ["logger=none"], out)
        met = json.load(open(os.path.join(out, "metrics.json")))
        ax.scatter([met["fit/seconds"]], [met["best/val/ndcg@10"]], marker=mk, s=90, zorder=3, color=col,
                   label=f"{m} (fit)")
        rows[m] = {"best_val_ndcg@10": met["best/val/ndcg@10"], "seconds_to_best": met["fit/seconds"]}
    ax.set_xlabel("seconds of training (wall clock, 2 CPU threads)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(f"Convergence ({tag} protocol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
