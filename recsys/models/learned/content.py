"""The content part: s_ct[u, i] = P[u] . C[i], from the content-token table E.

    C[i] = sum_t w(i, t) E[t]        TF-IDF weighted pool of token embeddings
    P[u] = mean_{j in H(u)} C[j]     mean content vector of u's history H(u)

E is learned, or a pretrained table (token_pre_dim > 0) projected to dim. An item never seen
in training has its C from its tokens, and a user outside the model its P from their history:
neither needs retraining.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.learned.config import LearnedItems, ScorerConfig
from recsys.models.learned.rows import bag_entries, bag_sum, compact, dot
from recsys.models.learned.scorer import Batch, Scorer
from recsys.sparse.csr import gather_rows


class Content(Scorer):
    variant = "content"
    pools_tokens = True

    def _make_tables(self, c: ScorerConfig, buffers: dict) -> None:
        if c.token_pre_dim > 0:
            # pretrained token table P, rescaled to unit spread; E = P W^T with W (dim, d_pre)
            # initialised so that E's entries have spread init_std like a learned table's
            pre = buffers.get("token_pre")
            if pre is None or tuple(pre.shape) != (c.n_tokens, c.token_pre_dim):
                raise ValueError(f"token_pre_dim={c.token_pre_dim} needs a token_pre buffer of shape "
                                 f"({c.n_tokens}, {c.token_pre_dim})")
            pre = torch.as_tensor(pre).float()
            self.token_pre = nn.Parameter(pre / pre.std().clamp(min=1e-8), requires_grad=c.token_pre_train)
            self.token_proj = nn.Linear(c.token_pre_dim, c.dim, bias=False)
            nn.init.normal_(self.token_proj.weight, std=c.init_std / c.token_pre_dim ** 0.5)
        else:
            self.token_emb = nn.Embedding(c.n_tokens, c.dim)
            nn.init.normal_(self.token_emb.weight, std=c.init_std)
        super()._make_tables(c, buffers)

    @classmethod
    def _declare_own(cls, c: ScorerConfig, spec, p: str) -> None:
        spec.add(p + "token_emb.weight", "F32", c.n_tokens, c.dim)
        super()._declare_own(c, spec, p)

    def _grow_state(self, state: dict, buffers: dict, m: int) -> None:
        if self.config.token_pre_dim > 0:
            buffers["token_pre"] = state["token_pre"]
        super()._grow_state(state, buffers, m)

    @property
    def alpha(self) -> torch.Tensor:
        return torch.tensor(0.0)

    # --- item and user vectors -----------------------------------------------------------------

    def token_table(self) -> torch.Tensor:
        """E: (T, D) token embeddings: learned, or the projected pretrained table."""
        if self.config.token_pre_dim > 0:
            return self.token_proj(self.token_pre)                               # (T, d_pre) -> (T, D)
        return self.token_emb.weight

    def item_content(self) -> torch.Tensor:
        """C: (I, D), the TF-IDF weighted sum of each item's token embeddings (0 for no tokens)."""
        return F.embedding_bag(self.tok_indices, self.token_table(), self.tok_indptr[:-1],
                               mode="sum", per_sample_weights=self.tok_weights)

    def profile_from_items(self, indptr: torch.Tensor, indices: torch.Tensor,
                           rows: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """P: (B, D), mean of C over the items of CSR rows `rows` (zeros for an empty row).
        Each distinct row is pooled once (training batches repeat heavy users many times), by
        one fused embedding_bag (no (history, D) temporary, forward or backward)."""
        uniq, inv = torch.unique(rows, return_inverse=True)
        pos, _ = gather_rows(indptr, uniq)
        lengths = indptr[uniq + 1] - indptr[uniq]
        offsets = torch.cumsum(lengths, 0) - lengths                                 # (b,)
        P = F.embedding_bag(indices[pos], C, offsets, mode="mean")                   # (b, D), 0 if empty
        return P[inv]

    def user_profile(self, users: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return self.profile_from_items(self.hist_indptr, self.hist_indices, users, C)

    def history_profile(self, H: torch.Tensor, side: LearnedItems) -> torch.Tensor:
        """(b, D) content profiles of the (b, I) histories H."""
        rows = torch.arange(H.shape[0], device=H.crow_indices().device)
        return self.profile_from_items(H.crow_indices(), H.col_indices(), rows, side.C)

    # --- scores -----------------------------------------------------------------------------

    def _side_parts(self) -> dict:
        return {**super()._side_parts(), "C": self.item_content()}                # C (I, D)

    def _components(self, users, side: LearnedItems, items, profile, out: dict) -> None:
        P = self.user_profile(users, side.C) if profile is None else profile
        out["content"] = dot(P, side.C, items)
        super()._components(users, side, items, profile, out)

    def _history_parts(self, H: torch.Tensor, side: LearnedItems, out: dict) -> None:
        out["content"] = self.history_profile(H, side) @ side.C.T
        super()._history_parts(H, side, out)

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return parts["content"]

    def _score_into(self, users: torch.Tensor, side: LearnedItems, out: torch.Tensor, ws) -> torch.Tensor:
        return torch.mm(self.user_profile(users, side.C), side.C.T, out=out)

    def _columns(self, users: torch.Tensor, side: LearnedItems, cols: torch.Tensor) -> torch.Tensor:
        return self.component_scores(users, side, cols)["content"]

    # --- spaces, projector, training ---------------------------------------------------------

    def _spaces(self) -> tuple[str, ...]:
        return ("content",) + super()._spaces()

    def _projector(self, tables: dict) -> None:
        tables["items/content"] = self.item_content().detach()
        super()._projector(tables)

    def _sparse(self, out: list) -> None:
        if self.config.token_pre_dim == 0:
            out.append(self.token_emb.weight)
        super()._sparse(out)

    def content_rows(self, items: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """C[items]: (M, D) content vectors of (M,) items only, equal to item_content()[items]
        without the pass over the whole catalog."""
        tokens, weights, offsets = bag_entries(self.tok_indptr, self.tok_indices, self.tok_weights, items)
        if sparse and self.config.token_pre_dim == 0:
            # the distinct tokens read once: the sparse gradient then has one entry per row,
            # not one per occurrence (which SparseAdam would have to sort and sum)
            rows, tokens = compact(tokens, self.config.n_tokens)
            E = F.embedding(rows, self.token_emb.weight, sparse=True)                   # (T', D)
        else:
            E = self.token_table()                                                       # (T, D)
        return bag_sum(E, tokens, weights, offsets)

    def batch_scores(self, batch: Batch) -> None:
        """P[users] . C[pos] (B, 1) and against the shared negatives, with C computed once for
        the union of the items these need (pos, neg, the histories of the distinct users; each
        user pooled once: training batches repeat heavy users many times)."""
        Pu, Cp, Cn = self._batch_content(batch.uniq, batch.pos_items, batch.neg_items, batch.sparse,
                                         batch.max_history)
        P = Pu[batch.inv]                                                                # (B, D)
        batch.pos["content"] = (P * Cp).sum(1, keepdim=True)                             # (B, 1)
        batch.neg["content"] = (Pu if batch.per_user else P) @ Cn.T
        super().batch_scores(batch)

    def _batch_content(self, uniq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, sparse: bool,
                       max_history: int = 0):
        """(P (b, D) of the (b,) distinct users `uniq`, C[pos] (B, D), C[neg] (N, D))."""
        if max_history > 0:
            hpos, lengths = self._sample_history(uniq, max_history)
        else:
            hpos, _ = gather_rows(self.hist_indptr, uniq)
            lengths = self.hist_indptr[uniq + 1] - self.hist_indptr[uniq]              # (b,)
        B, N = len(pos), len(neg)
        items, slot = compact(torch.cat([pos, neg, self.hist_indices[hpos]]), self.config.n_items)
        C = self.content_rows(items, sparse)                                          # (M, D)
        offsets = torch.cumsum(lengths, 0) - lengths
        w = torch.repeat_interleave(1.0 / lengths.clamp(min=1).to(C.dtype), lengths)  # mean: 1 / |H(u)|
        P = bag_sum(C, slot[B + N:], w, offsets)                                      # (b, D), 0 if empty
        return P, F.embedding(slot[:B], C), F.embedding(slot[B:B + N], C)

    def _sample_history(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in hist_indices, per-user counts (b,)) of the history items pooled for
        the (b,) users: all of a history of at most k items, else k drawn uniformly with
        replacement (torch's generator, on the users' device)."""
        start = self.hist_indptr[users]
        lengths = self.hist_indptr[users + 1] - start                                  # (b,)
        take = lengths.clamp(max=k)
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), take)   # (n,)
        j = torch.arange(len(row), device=users.device) - (torch.cumsum(take, 0) - take)[row]
        long = lengths[row] > k
        if bool(long.any()):
            drawn = (torch.rand(len(row), device=users.device) * lengths[row]).long()
            j = torch.where(long, torch.minimum(drawn, lengths[row] - 1), j)
        return start[row] + j, take
