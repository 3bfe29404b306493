"""The learned scorer: users, items and content tokens as embedding tables, scores as matmuls.

    collaborative  s_cf[u, i] = U[u] . V[i] + b[i]                   collaborative.py
    content        s_ct[u, i] = P[u] . C[i]                          content.py
                   C[i] = sum_t w(i, t) E[t], P[u] = mean_{j in H(u)} C[j]
    hybrid         s[u, i] = alpha * z_u(s_cf)[i] + (1 - alpha) * z_u(s_ct)[i]   hybrid.py
    mf_tokens      s[u, i] = U[u] . (V[i] + C[i]) + b[i]             mf_tokens.py

One class per variant, all built by `Scorer(config, buffers)` (scorer.py: the buffers, export,
growth and the scoring skeleton; each part adds its tables, scores and training scores through
hooks, and the hybrid is both parts). The training objective that reads the parts' batch
scores is train/learned_loss.py. The modules have no Lightning, Hydra or pandas; a scorer
follows the device of its parameters.

Worked example (shapes): 3 users, 5 items, 7 tokens, dim 4; `s = Scorer(cfg, buffers)`;
`s(torch.tensor([0, 2]))` -> (2, 5) scores of users 0 and 2 against every item.
"""
from recsys.models.learned.collaborative import Collaborative
from recsys.models.learned.config import (BUFFERS, FILL, VARIANTS, HybridSide, LearnedItems, ScorerConfig,
                                          empty_fill)
from recsys.models.learned.content import Content
from recsys.models.learned.hybrid import Hybrid, blend
from recsys.models.learned.mf_tokens import TokenMF
from recsys.models.learned.scorer import VARIANT_CLASSES, Batch, Scorer

__all__ = ["BUFFERS", "FILL", "VARIANTS", "VARIANT_CLASSES", "Batch", "Collaborative", "Content", "Hybrid",
           "HybridSide", "LearnedItems", "Scorer", "ScorerConfig", "TokenMF", "blend", "empty_fill"]
