"""Most-popular baseline: every user, known or not, gets the items with the most training
interactions, s[u, i] = number of training interactions of i."""
from __future__ import annotations

import torch

from recsys.models.memory import MemoryConfig, MemoryModel


def popularity_counts(item_indices: torch.Tensor, n_items: int) -> torch.Tensor:
    """(I,) float: how many of the given interactions each item has."""
    return torch.bincount(item_indices, minlength=n_items).float()


class Popularity(MemoryModel):
    kind = "popularity"
    fields = ()
    tables = ("pop",)
    parallel_chunks = False

    @classmethod
    def _fit_tables(cls, c: MemoryConfig, X: torch.Tensor, buffers: dict) -> dict[str, torch.Tensor]:
        return {"pop": popularity_counts(buffers["hist_indices"], c.n_items)}

    @classmethod
    def _declare_tables(cls, c: MemoryConfig, spec, p: str) -> None:
        spec.add(p + "pop", "F32", c.n_items)

    def score_users(self, users: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        return self.pop.expand(len(users), -1).clone()                             # (b, I)

    def score_columns(self, who: torch.Tensor, side, cols: torch.Tensor | None = None, out=None, ws=None) -> torch.Tensor:
        if cols is None:
            return self.score(who, side, out, ws)
        return self.pop[cols].expand(who.shape[0], -1).clone()                     # (b, C)

    def score_histories(self, H: torch.Tensor, side, out=None, ws=None) -> torch.Tensor:
        return self.pop.expand(H.shape[0], -1).clone()                             # the same for anybody

    def _grow_tables(self, st: dict[str, torch.Tensor], m: int) -> None:
        st["pop"] = torch.cat([st["pop"], torch.zeros(m, dtype=st["pop"].dtype, device=st["pop"].device)])
