"""Most-popular baseline on the same data and split as a train.py run.

    python benchmarks/popularity.py                       # the default (embedded MovieLens) split
    python benchmarks/popularity.py experiment=random80  # the shared fixed split
Any train.py data override works the same way (data=csv data.train=...).
"""
from __future__ import annotations

import os
import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recsys.train.build import build_memory, eval_sets  # noqa: E402
from recsys.eval.evaluation import evaluate, format_table  # noqa: E402


def main(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp", *overrides])
    prep = instantiate(cfg.data)
    sets = eval_sets(prep)
    model = build_memory(prep, {"kind": "popularity"})
    metrics, _ = evaluate(model, sets["test_target"], sets["test_seen"], list(cfg.ks))
    print(format_table(metrics))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
