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
from recsys.eval import rerank as R
from recsys.eval.beyond import unit_rows
from recsys.eval.evaluation import users_with_targets
from recsys.train.build import eval_sets
prep, spec = D.prepare([])
blend = spec.build(prep)
sets = eval_sets(prep)
bags = R.item_bags(blend)
genres, names = R.prefix_distribution(bags, prep.tokens, "genres:")
gu = torch.nn.functional.normalize(genres, dim=1)
aux = {"bags": bags, "genres": genres, "n_items": prep.n_items, "n_users": prep.n_users,
       "counts": torch.bincount(torch.from_numpy(prep.train[:, 1]), minlength=prep.n_items),
       "unit": unit_rows(*bags, len(prep.tokens)), "genre_unit": gu.to_sparse_csr(),
       "seen": {"valid": sets["val_seen"], "test": sets["test_seen"]},
       "target": {"valid": sets["val_target"], "test": sets["test_target"]}}
aux["users"] = {p: users_with_targets(t[0]) for p, t in aux["target"].items()}
m = blend.first
for part in ("valid", "test"):
    base = D.setting_metrics(m, part, None, 0, aux)
    print(part, "base", {k: round(v, 4) for k, v in base.items()}, flush=True)
    for lam in (0.8, 0.7, 0.6, 0.5, 0.4):
        for pool in (50, 100):
            r = D.setting_metrics(m, part, R.MMR(gu, lam), pool, aux)
            print(part, f"genre-MMR lam {lam} pool {pool}", f"ndcg {r['ndcg']:.4f} ({100*(r['ndcg']/base['ndcg']-1):+.1f}%)",
                  f"gild {r['gild']:.4f} ({100*(r['gild']/base['gild']-1):+.1f}%)", f"ild {r['ild']:.4f}", flush=True)
