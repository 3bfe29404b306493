"""MMR with the MEAN cosine to the items already listed (intra-list diversity is a mean over
pairs) instead of recsys's max (rerank.MMR), over the items' genre vectors: NDCG@10 against
genre ILD@10 for EASE on the default protocol (validation and test), with the study's own
functions (benchmarks/diversity.py). benchmarks/README.md, "Diversity re-ranking", holds the table.

    python benchmarks/prototypes/mean_mmr.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from genre_mmr import R, sweep  # noqa: E402  (sets the paths and warnings of the study)


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


sweep(MeanMMR, "mean-MMR", lams=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3), pools=(30, 100))
