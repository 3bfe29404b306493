"""MMR with the MEAN cosine to the items already listed (intra-list diversity is a mean over
pairs) instead of recsys's max (rerank.MMR), over the items' genre vectors: NDCG@10 against
genre ILD@10 for EASE on the default protocol (validation and test), with the study's own
functions (benchmarks/diversity.py). benchmarks/README.md, "Diversity re-ranking", holds the table.

    python benchmarks/prototypes/mean_mmr.py
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


class MeanMMR(R.MMR):
    """Slot by slot, argmax of lam * rel(i) - (1 - lam) * mean_{j listed} cos(i, j)."""

    def __call__(self, rows, idx, scores, k):
        b, c = idx.shape
        k = min(k, c)
        ok = torch.isfinite(scores)
        rel = R.relevance(scores)                                                    # (b, c)
        S = R.pool_cosines(self.indptr, self.indices, self.values, self.n_cols, idx)  # (b, c, c)
        total = torch.zeros(b, c, device=idx.device)                                  # sum cos to the list
        listed = [0]
        ar = torch.arange(b, device=idx.device)

        def update(pick):
            total.add_(S[ar, pick])
            listed[0] += 1

        picks = R._greedy(lambda t: self.lam * rel - (1 - self.lam) * total / max(listed[0], 1), ok, k, update)
        return R._keep(idx, scores, picks)


prep, blend, aux, _ = D.study([])
gu = torch.nn.functional.normalize(aux["genres"], dim=1)
m = blend.first
for part in ("valid", "test"):
    base = D.setting_metrics(m, part, None, 0, aux)
    print(part, "base", {k: round(v, 4) for k, v in base.items()}, flush=True)
    for lam in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        for pool in (30, 100):
            r = D.setting_metrics(m, part, MeanMMR(gu, lam), pool, aux)
            print(part, f"mean-MMR lam {lam} pool {pool}", f"ndcg {r['ndcg']:.4f} ({100*(r['ndcg']/base['ndcg']-1):+.1f}%)",
                  f"gild {r['gild']:.4f} ({100*(r['gild']/base['gild']-1):+.1f}%)", f"ild {r['ild']:.4f}", flush=True)
