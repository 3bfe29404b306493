"""MMR over the items' genre vectors instead of their TF-IDF vectors: NDCG@10 against genre ILD@10
for EASE on the default protocol (validation and test), with the study's own functions
(benchmarks/diversity.py). benchmarks/README.md, "Diversity re-ranking", holds the table.

    python benchmarks/prototypes/genre_mmr.py
"""
import os
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")
import diversity as D  # noqa: E402
from recsys.eval import rerank as R  # noqa: E402



def sweep(make, label: str, lams=(0.8, 0.7, 0.6, 0.5, 0.4), pools=(50, 100)) -> None:
    """Print NDCG@10, genre ILD@10 and TF-IDF ILD@10 of EASE re-ranked by make(genre unit
    vectors, lam) with each pool size, against EASE alone, on validation and test."""
    prep, blend, aux, _ = D.study([])
    gu = torch.nn.functional.normalize(aux["genres"], dim=1)
    m = blend.first
    for part in ("valid", "test"):
        base = D.setting_metrics(m, part, None, 0, aux)
        print(part, "base", {k: round(v, 4) for k, v in base.items()}, flush=True)
        for lam in lams:
            for pool in pools:
                r = D.setting_metrics(m, part, make(gu, lam), pool, aux)
                print(part, f"{label} lam {lam} pool {pool}",
                      f"ndcg {r['ndcg']:.4f} ({100*(r['ndcg']/base['ndcg']-1):+.1f}%)",
                      f"gild {r['gild']:.4f} ({100*(r['gild']/base['gild']-1):+.1f}%)", f"ild {r['ild']:.4f}", flush=True)


if __name__ == "__main__":
    sweep(R.MMR, "genre-MMR")
