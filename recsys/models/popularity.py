"""Most-popular baseline: every user gets the items with the most training interactions.
Same ranking interface as Scorer (config.n_items, item_tables, score_users), so it goes through
the same chunked ranking and metrics."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PopularityConfig:
    n_users: int
    n_items: int
    variant: str = "popularity"


class Popularity(nn.Module):
    def __init__(self, n_users: int, train_items: torch.Tensor, n_items: int):
        """train_items: (N,) item index of every training interaction."""
        super().__init__()
        self.config = PopularityConfig(n_users, n_items)
        self.register_buffer("counts", torch.bincount(train_items, minlength=n_items).float())
        self.register_buffer("hist_indptr", torch.zeros(n_users + 1, dtype=torch.long))  # device anchor

    def item_tables(self) -> dict:
        return {"counts": self.counts}

    def score_users(self, users: torch.Tensor, tables: dict) -> torch.Tensor:
        return tables["counts"].expand(len(users), -1).clone()   # (B, I)

    def score_histories(self, H: torch.Tensor, tables: dict) -> torch.Tensor:
        return tables["counts"].expand(H.shape[0], -1).clone()   # (b, I): the same for anybody

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_users(users, self.item_tables())
