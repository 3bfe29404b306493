"""Item-item and user-user similarity: what Recommender.similar_items / similar_users rank.

A model answers `similarity_side(of, space)` (of = "items" or "users") with a side object whose
`score(who, cols)` gives the (b, C) similarities of the b query rows `who` to the columns `cols`
(None: all items or all users); -inf marks a pair that is not similar at all (outside a stored
neighbour list), which the ranking leaves out. The spaces:

    history        cosine of the binary training-interaction vectors: an item's column of
                   users, a user's row of items (any model that keeps the histories: all)
    tokens         cosine of the items' TF-IDF token bags (any model that keeps them; a cold
                   item or one added later has token neighbours too)
    neighbours     the stored k-neighbour lists: ItemKNN and ContentKNN (items), UserKNN
                   (users), similarity as fitted
    weights        EASE (items): column q of B, how much each item votes for q in a score
                   (B[j, q] = -P[j, q] / P[q, q]: one scale per column, so the order is that of
                   -P[:, q], the partial correlation of j and q given all other items)
    collaborative  learned: cosine of the item vectors V (users: of the user vectors U)
    content        learned: cosine of the pooled content vectors C (users: of the profiles P)
    hybrid         learned: alpha * collaborative + (1 - alpha) * content
    blend          Blend: its alpha blend of the parts' default similarities, each normalised
                   per row as the blend normalises scores (outside-the-list pairs count 0)

Worked example (shapes): side = model.similarity_side("items", "tokens");
side.score(torch.tensor([3, 7]), None) -> (2, I); side.score(q, cols) with cols (C,) -> (2, C).
A row's values agree with the same row asked among others up to float32 rounding (see
eval/ranking.py rank(): the batch-and-single promise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.sparse.csr import row_ids
from recsys.sparse.similarity import select_rows, sparse_rows, transpose
from recsys.sparse.spgemm import DENSE_RATIO, RightOperand, Workspace, column_counts, heavy_columns

SPACES = ("history", "tokens", "neighbours", "weights", "collaborative", "content", "hybrid", "blend")


class RowCosine:
    """Cosine of rows of a sparse matrix X (R, C): query rows of X against all rows, by the
    sparse kernel of spgemm.py (b x R dense block)."""

    def __init__(self, X: torch.Tensor, dense_ratio: float = DENSE_RATIO, max_products: float = 2_000_000):
        R = X.shape[0]
        cc = column_counts(X)
        self.X, self.max_products = X, max_products
        self.op = RightOperand(X, heavy_columns(cc, cc, R, R, dense_ratio))
        val = X.values()
        sq = torch.zeros(R, dtype=val.dtype, device=val.device).index_add_(0, row_ids(X.crow_indices()), val * val)
        self.inv_norm = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))            # (R,), 0 for empty rows

    def score(self, who: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        A = select_rows(self.X, who)                                                      # (b, C) sparse
        out = torch.empty(len(who), self.X.shape[0], dtype=self.X.values().dtype, device=self.X.values().device)
        s = self.op.product_bounded(A, out, Workspace(), self.max_products)               # (b, R)
        s.mul_(self.inv_norm[None, :]).mul_(self.inv_norm[who, None])
        return s if cols is None else s[:, cols]


class DenseCosine:
    """Cosine of rows of dense tables, alpha-weighted when there are several:
    s = sum_t w_t cos_t (the learned models' spaces)."""

    def __init__(self, tables: list[torch.Tensor], weights: list[float]):
        self.tables = [F.normalize(T.detach().float(), dim=1) for T in tables]           # (R, D) unit rows
        self.weights = [float(w) for w in weights]

    def score(self, who: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        s = None
        for T, w in zip(self.tables, self.weights):
            part = T[who] @ (T if cols is None else T[cols]).T                           # (b, C)
            s = part.mul_(w) if s is None else s.add_(part, alpha=w)
        return s


class Neighbours:
    """The stored neighbour lists W (R, R) sparse CSR: row q's entries, -inf elsewhere."""

    def __init__(self, W: torch.Tensor):
        self.W = W

    def score(self, who: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        Wq = select_rows(self.W, who)
        crow = Wq.crow_indices()
        s = torch.full((len(who), self.W.shape[1]), float("-inf"), dtype=Wq.values().dtype, device=crow.device)
        s[row_ids(crow), Wq.col_indices()] = Wq.values()
        return s if cols is None else s[:, cols]


class Columns:
    """Column q of a dense (R, R) matrix as query q's similarities (EASE's B)."""

    def __init__(self, B: torch.Tensor):
        self.B = B

    def score(self, who: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        B = self.B if cols is None else self.B[cols]
        return B.index_select(1, who).T.contiguous()                                      # (b, C)


class Blended:
    """alpha * n(first) + (1 - alpha) * n(second), n the blend's per-row normalisation; pairs
    a part leaves out (-inf) count 0 in it."""

    def __init__(self, first, second, alpha: float, norm):
        self.first, self.second, self.alpha, self.norm = first, second, float(alpha), norm

    def score(self, who: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        def part(side):
            s = side.score(who, cols)
            return self.norm(s.masked_fill_(torch.isinf(s) & (s < 0), 0.0))
        return self.alpha * part(self.first) + (1 - self.alpha) * part(self.second)


def history_side(model, of: str, space: str = "history") -> RowCosine:
    """Cosine of binary interaction vectors from the model's history buffers."""
    if not model.keeps("hist_indptr", "hist_indices"):
        raise ValueError(f"space={space!r}: this model keeps no training histories")
    c = model.config
    X = sparse_rows(model.hist_indptr, model.hist_indices, None, c.n_items)                # (U, I) binary
    return RowCosine(X if of == "users" else transpose(X))


def token_side(model, space: str = "tokens") -> RowCosine:
    """Cosine of the items' TF-IDF token bags."""
    if not model.keeps("tok_indptr", "tok_indices", "tok_weights"):
        raise ValueError(f"space={space!r}: this model keeps no item token bags")
    n_tokens = int(getattr(model.config, "n_tokens", 0)) or int(model.tok_indices.max()) + 1
    return RowCosine(sparse_rows(model.tok_indptr, model.tok_indices, model.tok_weights, n_tokens))


def check_space(space, own: tuple[str, ...], of: str, kind: str) -> None:
    allowed = own + ("history",) + (("tokens",) if of == "items" else ())
    if space not in allowed:
        raise ValueError(f"space={space!r} is not a similarity space of {kind} {of} (choose from {list(allowed)})")
