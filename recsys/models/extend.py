"""New items in a fitted model, without retraining: `add_items(model, bags)`.

The new items arrive as TF-IDF token bags (content.py; tokenised with the model's stored
tokenizer, weighted with its stored idf) and are appended to the catalog, after the existing
items. They have no interaction, so each model treats them exactly as it treats a cold item
of its training catalog, and the scores equal those of the same model fitted with the items
present and never interacted with (with the same idf):

    learned      C[new] pooled from the token table (content part); the collaborative part
                 gives the neutral score, or with cold_k > 0 borrows V, b from the new item's
                 content neighbours among the warm items (coldstart.py)
    content_knn  the neighbourhoods are recomputed from all items' bags (old items may gain a
                 new neighbour; a fit with the items present would have the same lists)
    itemknn      new items have no neighbours (no co-occurrence); with cold_k, borrowed scores
    userknn      nobody interacted with them: score 0, or borrowed scores with cold_k
    ease         B grows by zero rows and columns (a never-seen item's column of the closed
                 form is exactly 0); with cold_k, borrowed scores
    popularity   count 0
    blend        each part grows

Returns a new module (the given one is left as it was).
"""
from __future__ import annotations

import torch

from recsys.models.coldstart import fill_matrix
from recsys.data.content import TokenBags


def cat_bags(indptr, indices, weights, bags: TokenBags):
    dev = indptr.device
    new_ptr = torch.from_numpy(bags.indptr).to(dev)[1:] + indptr[-1]
    return (torch.cat([indptr, new_ptr]), torch.cat([indices, torch.from_numpy(bags.indices).to(dev)]),
            torch.cat([weights, torch.from_numpy(bags.weights).to(dev).to(weights.dtype)]))


def fill_rows(bufs: dict, old_fill: tuple, n_old: int, m: int, n_tokens: int, warm: torch.Tensor,
               k: int, scale: float) -> tuple:
    """The fill matrix of the grown catalog: the old rows, plus rows for the m new items."""
    ip, ix, w = old_fill
    dev = ip.device
    ip = torch.cat([ip, torch.full((m,), int(ip[-1]), dtype=ip.dtype, device=dev)])
    if k <= 0:
        return ip, ix, w
    warm = torch.cat([warm.to(dev), torch.zeros(m, dtype=torch.bool, device=dev)])
    rows = torch.arange(n_old, n_old + m, device=dev)
    nip, nix, nw = fill_matrix(bufs["tok_indptr"], bufs["tok_indices"], bufs["tok_weights"], n_tokens, warm,
                               k, scale, rows=rows)
    counts = torch.diff(ip) + torch.diff(nip)
    out_ip = torch.zeros_like(ip)
    out_ip[1:] = torch.cumsum(counts, 0)
    return out_ip, torch.cat([ix, nix]), torch.cat([w, nw.to(w.dtype)])


def add_items(model: torch.nn.Module, bags: TokenBags) -> torch.nn.Module:
    """`model` with the items of `bags` appended to its catalog (model.grow)."""
    return model.grow(bags)
