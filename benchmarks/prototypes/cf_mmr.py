"""Collaborative intra-list diversity: ILD@10 over the items' training-interaction vectors (the
columns of the binary user x item training matrix, cosine as in ItemKNN), for EASE on the default
protocol, before and after MMR over those same vectors, over the genre vectors and over TF-IDF.

    python benchmarks/prototypes/cf_mmr.py
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
from recsys.eval.beyond import intra_list_distance  # noqa: E402

prep, blend, aux, _ = D.study([])
gu = torch.nn.functional.normalize(aux["genres"], dim=1)
tr = torch.from_numpy(prep.train[:, :2]).long()
X = torch.zeros(prep.n_items, prep.n_users)
X[tr[:, 1], tr[:, 0]] = 1.0
cf = torch.nn.functional.normalize(X, dim=1)                        # (I, U) unit item vectors
cf_csr = cf.to_sparse_csr()
m = blend.first


def run(part, rr, pool):
    ndcg, L = D.measure_lists(m, aux["users"][part], aux["target"][part], aux["seen"][part], rr, pool)
    return ndcg, float(intra_list_distance(L, cf_csr).mean()), float(intra_list_distance(L, aux["genre_unit"]).mean())


for part in ("valid", "test"):
    n0, c0, g0 = run(part, None, 0)
    print(part, f"base ndcg {n0:.4f} cf-ILD {c0:.4f} genre-ILD {g0:.4f}", flush=True)
    for space, vec in (("cf", cf_csr), ("tfidf", aux["unit"]), ("genre", gu)):
        for s in (0.1, 0.2, 0.3, 0.4, 0.5):
            n, c, g = run(part, R.MMR(vec, 1 - s), 50)
            print(part, f"MMR[{space}] strength {s}", f"ndcg {n:.4f} ({100 * (n / n0 - 1):+.1f}%)",
                  f"cf-ILD {c:.4f} ({100 * (c / c0 - 1):+.1f}%)", f"genre-ILD {g:.4f} ({100 * (g / g0 - 1):+.1f}%)",
                  flush=True)
