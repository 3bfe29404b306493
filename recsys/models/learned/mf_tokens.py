"""Matrix factorisation whose item vectors carry their content tokens (variant mf_tokens):

    s[u, i] = U[u] . (warm_i V[i] + C[i]) + b[i],    C[i] = sum_t w(i, t) E[t]

one collaborative score, with each item vector its id row plus the TF-IDF pool of its token
rows (as LightFM's item features, and as the sequence model's item tokens). An item with no
training interaction (warm_i = 0) is its tokens alone: cold items and items added later with
grow() are ranked by the same dot product, no borrowed rows. Trained by Adam on minibatches,
or in closed form (model=als_tokens: train/als.py alternates U, V and the token table E).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.learned.collaborative import Collaborative
from recsys.models.learned.config import ScorerConfig
from recsys.models.learned.rows import bag_entries, bag_sum


class TokenMF(Collaborative):
    variant = "mf_tokens"
    fills_cold = False                      # cold items are reached through their tokens
    pools_tokens = True
    item_tokens = True

    def _make_tables(self, c: ScorerConfig, buffers: dict) -> None:
        super()._make_tables(c, buffers)
        if c.token_pre_dim > 0:
            raise ValueError("variant mf_tokens learns its own token table: use the word or bpe tokenizer")
        self.token_emb = nn.Embedding(max(c.n_tokens, 1), c.dim)
        nn.init.normal_(self.token_emb.weight, std=c.init_std)

    @classmethod
    def _declare_own(cls, c: ScorerConfig, spec, p: str) -> None:
        super()._declare_own(c, spec, p)
        spec.add(p + "token_emb.weight", "F32", max(c.n_tokens, 1), c.dim)

    def item_content(self) -> torch.Tensor:
        """C (I, D): each item's TF-IDF weighted sum of token rows (0 without tokens)."""
        return F.embedding_bag(self.tok_indices, self.token_emb.weight, self.tok_indptr[:-1],
                               mode="sum", per_sample_weights=self.tok_weights)

    def item_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(warm V + C (I, D), b with cold items at the warm items' mean bias)."""
        warm = self.item_warm[:, None].to(self.item_emb.weight.dtype)
        b = self.item_bias
        if b is not None and not bool(self.item_warm.all()) and bool(self.item_warm.any()):
            b = torch.where(self.item_warm, b, b[self.item_warm].mean())
        return self.item_emb.weight * warm + self.item_content(), b

    def batch_item_rows(self, items: torch.Tensor, sparse: bool) -> torch.Tensor:
        V = super().batch_item_rows(items, sparse) * self.item_warm[items, None].to(self.item_emb.weight.dtype)
        return V + bag_sum(self.token_emb.weight, *bag_entries(self.tok_indptr, self.tok_indices, self.tok_weights, items))

    def neutralise_cold(self, s_cf: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        return s_cf                         # a cold item's score is its tokens' (no neutral value)

    def _projector(self, tables: dict) -> None:
        super()._projector(tables)
        tables["items/mf_tokens"] = self.item_rows()[0].detach()
