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


def _cat_bags(indptr, indices, weights, bags: TokenBags):
    dev = indptr.device
    new_ptr = torch.from_numpy(bags.indptr).to(dev)[1:] + indptr[-1]
    return (torch.cat([indptr, new_ptr]), torch.cat([indices, torch.from_numpy(bags.indices).to(dev)]),
            torch.cat([weights, torch.from_numpy(bags.weights).to(dev).to(weights.dtype)]))


def _fill_rows(bufs: dict, old_fill: tuple, n_old: int, m: int, n_tokens: int, warm: torch.Tensor,
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
    from recsys.models.memory import Blend, MemoryScorer
    from recsys.models.learned import Scorer
    if isinstance(model, Blend):
        return Blend(add_items(model.first, bags), add_items(model.second, bags), model.config.alpha,
                     model.config.norm)
    if isinstance(model, Scorer):
        return _add_learned(model, bags)
    if isinstance(model, MemoryScorer):
        return _add_memory(model, bags)
    raise TypeError(f"cannot add items to a {type(model).__name__}")


def _add_learned(model, bags: TokenBags):
    from dataclasses import replace

    from recsys.models.learned import BUFFERS, FILL, Scorer
    c, m = model.config, bags.n_items
    n_old = c.n_items
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tok = _cat_bags(state["tok_indptr"], state["tok_indices"], state["tok_weights"], bags)
    state["tok_indptr"], state["tok_indices"], state["tok_weights"] = tok
    warm = state["item_warm"]
    state["item_warm"] = torch.cat([warm, torch.zeros(m, dtype=torch.bool, device=warm.device)])
    if c.uses_cf:
        W = state["item_emb.weight"]
        state["item_emb.weight"] = torch.cat([W, torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)])
        if "item_bias" in state:
            b = state["item_bias"]
            state["item_bias"] = torch.cat([b, torch.zeros(m, dtype=b.dtype, device=b.device)])
    fill = _fill_rows(state, (state["fill_indptr"], state["fill_indices"], state["fill_weights"]), n_old, m,
                      c.n_tokens, warm, c.cold_k if c.uses_cf else 0, c.cold_scale)
    state["fill_indptr"], state["fill_indices"], state["fill_weights"] = fill
    buffers = {k: state[k] for k in BUFFERS + FILL}
    if c.token_pre_dim > 0:
        buffers["token_pre"] = state["token_pre"]
    out = Scorer(replace(c, n_items=n_old + m), buffers)
    out.load_state_dict(state, strict=True)
    return out.to(model.tok_indices.device).train(model.training)


def _add_memory(model, bags: TokenBags):
    from dataclasses import replace

    from recsys.models.memory import FILLED_KINDS, MemoryScorer
    from recsys.sparse.similarity import sparse_rows, topk_neighbours
    c, m = model.config, bags.n_items
    n_old = c.n_items
    st = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "tok_indptr" not in st:
        raise ValueError("this export keeps no item token bags (made by an older recsys): refit it to add items")
    st["tok_indptr"], st["tok_indices"], st["tok_weights"] = _cat_bags(st["tok_indptr"], st["tok_indices"],
                                                                       st["tok_weights"], bags)
    n = n_old + m
    dev = st["hist_indptr"].device
    if c.kind == "content_knn":
        W = topk_neighbours(sparse_rows(st["tok_indptr"], st["tok_indices"], st["tok_weights"], c.n_tokens),
                            c.similarity, c.k, c.shrink, c.block_size, c.max_products, c.dense_ratio)
        st["w_indptr"], st["w_indices"], st["w_values"] = W.crow_indices().long(), W.col_indices().long(), W.values().float()
    elif c.kind == "itemknn":
        ip = st["w_indptr"]
        st["w_indptr"] = torch.cat([ip, torch.full((m,), int(ip[-1]), dtype=ip.dtype, device=dev)])
    elif c.kind == "ease":
        B = st["ease_B"]
        st["ease_B"] = torch.nn.functional.pad(B, (0, m, 0, m))
    elif c.kind == "popularity":
        st["pop"] = torch.cat([st["pop"], torch.zeros(m, dtype=st["pop"].dtype, device=dev)])
    out = MemoryScorer(replace(c, n_items=n), {k: v for k, v in st.items() if not k.startswith("fill_")})
    if "fill_indptr" in st or (c.cold_k > 0 and c.kind in FILLED_KINDS):
        warm = torch.bincount(st["hist_indices"], minlength=n_old) > 0
        old = ((st["fill_indptr"], st["fill_indices"], st["fill_weights"]) if "fill_indptr" in st else
               (torch.zeros(n_old + 1, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev),
                torch.zeros(0, device=dev)))
        out.set_fill(*_fill_rows(st, old, n_old, m, c.n_tokens, warm, c.cold_k, c.cold_scale))
    return out.train(model.training)
