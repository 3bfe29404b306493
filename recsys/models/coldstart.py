"""Collaborative scores for cold items, borrowed from their content neighbours.

A collaborative model (learned MF, ItemKNN, UserKNN, EASE) knows nothing of an item with no
training interaction: a cold item of the catalog, or one added to an export later. With
`cold_k > 0` such an item c gets the similarity-weighted mean of the collaborative scores of
its `cold_k` most content-similar warm items N(c), times `cold_scale`:

    s_cf(u, c) = cold_scale * sum_{n in N(c)} cos(c, n) s_cf(u, n) / sum_{n in N(c)} cos(c, n)

cos = cosine of the TF-IDF token vectors (content.py). The weights form a sparse "fill" matrix
M (I, I) whose only non-empty rows are the cold items', so for any (b, I) score block the cold
columns are s[:, cold] = s @ M[cold]^T; for the learned MF the same is done once on the item
side (V[c] = M[c] V, b[c] = M[c] b), which gives the same scores because they are linear.
A cold item with no content neighbour (no known token) keeps the model's neutral score.
cold_k = 0 (the default for the pure collaborative variants) leaves cold items as they were.

The mean shrinks: a weighted mean of k scores is rarely as high as the top warm scores, so with
cold_scale = 1 cold items mostly stay below a user's favourites; cold_scale > 1 lifts them, at a
cost in warm accuracy. benchmarks/README.md ("Cold items") measures the trade-off.
Memory: the fill rows hold n_cold x cold_k weights; finding them compares the cold items'
token vectors with the warm items' in blocks of `block` rows: block x n_warm floats.
"""
from __future__ import annotations

import torch

from recsys.sparse.similarity import select_rows, sparse_rows


def fill_matrix(tok_indptr: torch.Tensor, tok_indices: torch.Tensor, tok_weights: torch.Tensor,
                n_tokens: int, warm: torch.Tensor, k: int, scale: float = 1.0, rows: torch.Tensor | None = None,
                block: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR (indptr (I+1,), indices, weights) of M: for each item of `rows` (default: the cold
    ones, ~warm) its k most content-similar warm items, weights = scale x cos / sum cos.
    Token bags are L2-normalised (content.py), so cos is their dot product."""
    n_items = len(tok_indptr) - 1
    dev = tok_indices.device
    warm = warm.to(dev)
    if rows is None:
        rows = torch.nonzero(~warm).flatten()
    indptr = torch.zeros(n_items + 1, dtype=torch.long, device=dev)
    if k <= 0 or len(rows) == 0 or not bool(warm.any()):
        return indptr, torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, device=dev)
    X = sparse_rows(tok_indptr, tok_indices, tok_weights, n_tokens)                 # (I, T)
    warm_idx = torch.nonzero(warm).flatten()
    Xw = select_rows(X, warm_idx).to_dense()                                        # (W, T)
    kk = min(int(k), len(warm_idx))
    vals, cols = [], []
    for r0 in range(0, len(rows), block):
        r = rows[r0:r0 + block]
        sim = select_rows(X, r) @ Xw.T                                              # (b, W) dense
        sim[warm_idx[None, :] == r[:, None]] = 0.0                                   # never itself
        v, i = torch.topk(sim, kk, dim=1)                                           # (b, kk)
        vals.append(v)
        cols.append(warm_idx[i])
    v, c = torch.cat(vals), torch.cat(cols)                                         # (R, kk)
    keep = v > 0
    tot = (v * keep).sum(1, keepdim=True)
    w = torch.where(keep, scale * v / tot.clamp(min=1e-12), torch.zeros_like(v))
    counts = torch.zeros(n_items, dtype=torch.long, device=dev)
    counts[rows] = keep.sum(1)
    indptr[1:] = torch.cumsum(counts, 0)
    order = torch.argsort(rows)                                                     # CSR rows in item order
    keep, c, w = keep[order], c[order], w[order]
    return indptr, c[keep], w[keep].float()


def filled_rows(indptr: torch.Tensor) -> torch.Tensor:
    """(I,) bool: the items that have a fill row."""
    return indptr[1:] > indptr[:-1]


def fill_scores(s: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """In place: the (b, I) score block's filled columns become s @ M[c]^T."""
    rows = torch.nonzero(filled_rows(indptr)).flatten()
    if len(rows) == 0:
        return s
    M = torch.sparse_csr_tensor(indptr, indices, weights.to(s.dtype), (len(indptr) - 1, s.shape[1]))
    Mc = select_rows(M, rows)                                                       # (C, I)
    s[:, rows] = (Mc @ s.T).T                                                       # (b, C)
    return s


def fill_table(T: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A copy of the item-side table T ((I, D) or (I,)) whose filled rows are M[c] T."""
    rows = torch.nonzero(filled_rows(indptr)).flatten()
    if len(rows) == 0:
        return T
    M = torch.sparse_csr_tensor(indptr, indices, weights.to(T.dtype), (len(indptr) - 1, T.shape[0]))
    Mc = select_rows(M, rows)
    out = T.clone()
    out[rows] = (Mc @ (T if T.dim() == 2 else T[:, None])).reshape(out[rows].shape)
    return out


# --- the two ways a model wires cold items in -------------------------------------------------
# Item side (models whose scores are linear in item rows: the learned MF): the cold rows of the
# tables are replaced once per ranking pass. Score side (any other model): the cold columns of
# each score block. Both give a cold item its borrowed score when it has a fill row, else the
# model's neutral score.

def cold_rows(V: torch.Tensor, b: torch.Tensor | None, warm: torch.Tensor,
              fill: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None):
    """V (I, D), b (I,) with every cold item's row replaced once: borrowed from its content
    neighbours when it has a fill row (`fill` = (indptr, indices, weights), or None for no
    borrowing), else the warm items' mean row, whose score u . mean(V_warm) + mean(b_warm) is
    the user's mean over warm items (neutral). Scores are linear in the rows, so this equals
    `neutralise` and `fill_scores` on every score block. The inputs are never written into."""
    neutral = ~warm
    if fill is not None:
        V = fill_table(V, *fill)
        b = None if b is None else fill_table(b, *fill)
        neutral = neutral & ~filled_rows(fill[0])
    if bool(neutral.any()) and bool(warm.any()):
        V = V.clone()
        V[neutral] = V[warm].mean(0)
        if b is not None:
            b = b.clone()
            b[neutral] = b[warm].mean()
    return V, b


def neutralise(s: torch.Tensor, warm: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """(B, I) scores whose columns outside `warm` (I,) bool are set to each user's mean score
    over the warm items: the neutral score of an item the model knows nothing of.
    With a (B, I) scratch block: in place in s (no autograd), the same values."""
    if bool(warm.all()):
        return s
    masked = s * warm if scratch is None else torch.mul(s, warm, out=scratch)
    mean = masked.sum(1, keepdim=True) / warm.sum().clamp(min=1)                   # (B, 1)
    if scratch is None:
        return torch.where(warm, s, mean)
    cold = torch.nonzero(~warm).flatten()
    s[:, cold] = mean.expand(-1, len(cold))
    return s
