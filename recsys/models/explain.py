"""Explanations: for each recommended item, the history items (and tokens, and for UserKNN the
neighbour users) that contributed most to its score.

    e = explain(model, H, items, top=3, side=None, users=None)
      H      (b, I) sparse CSR: the rows' histories, values = the x the model weighs them with
             (1, or the ratings of a values=rating memory model); None with `users` given: the
             model's own stored rows of those users (what score_users reads)
      items  (b, k) long: the recommended items of each row (-1: no item, explained as nothing)
      users  (b,) long or None: the rows' user indices when they are known users. UserKNN needs
             them (a known user's neighbours are its fitted W row; without `users` they are found
             as for a new history, exactly as score_histories does), the learned collaborative
             part uses U[u] instead of a fold-in, a Blend normalises with score_users
    e.item_idx (b, k, top) long, e.item_weight (b, k, top): the history items with the largest
    |contribution|, sorted by |weight| descending; -1 (weight 0) where fewer than `top` items
    have a non-zero contribution. Likewise token_idx/token_weight (content-based scores; None
    otherwise) and user_idx/user_weight (UserKNN; None otherwise). A history item that appears
    twice in H is one contributor with the summed weight.

Per model, the contribution of history item j (x_uj its value in H, H(u) the history) to the
score of item i for row u:

    itemknn      candidate: c_j = x_uj W[i, j];  history: c_j = x_uj W[j, i]
                 normalize=True: c_j / sum_{j' in H(u)} |W[., .]| (the model's own denominator,
                 over every history entry, 0 when it is 0)                            exact
    content_knn  the same with the token-based W                                          exact
                 tokens t of i: sum_j c_j share_t(i, j), share_t = a_it a_jt / sum_t' a_it' a_jt'
                 (a = TF-IDF bags; jaccard: 1 / |shared tokens|): each pair's similarity split
                 over the tokens the two items share. Sums to the score for cosine, jaccard and
                 pearson (a non-zero similarity needs a shared token); euclidean similarities of
                 items with no shared token are left out of the tokens
    ease         c_j = x_uj B[j, i]                                                        exact
    cold fill    (itemknn / ease / userknn with cold_k > 0): a filled item c scores
                 sum_n M[c, n] s(u, n), so its contributions are sum_n M[c, n] c_j(n): exact too
    userknn      contributors are neighbour users v: c_v = W[u, v] x[v, i] (normalize=True:
                 / sum_{v' in N(u), x[v', i] stored} |W[u, v']|), in user_idx/user_weight;
                 item_idx stays -1                                                         exact
    popularity   no contributors (all -1)                                                  not exact
    learned content
                 c_j = (C_j . C_i) / |H(u)| (P = mean of the C_j; H's values are not used)  exact
                 tokens t of i: w(i, t) (P . E_t), summing to s_ct = P . C_i                exact
    learned collaborative
                 no additive decomposition: c_j = cos(V_i, V_j) (V with cold rows as ranked),
                 the history items nearest the recommended one                             not exact
    learned hybrid
                 s = a z_cf + (1 - a) z_ct, z_ct = (s_ct - mean_ct) / std_ct. Content share
                 k2 (C_j . C_i) / |H(u)| with k2 = (1 - a) / (std_ct + 1e-8); the collaborative
                 part a z_cf(u, i) split over the history in proportion to the positive
                 cosines cos(V_i, V_j)+ (left out when none is positive); tokens k2 w(i, t)(P . E_t).
                 The weights sum to s + k2 mean_ct (a per-row constant) when some cosine is
                 positive                                                                  not exact
    blend        each part's contributions times alpha (or 1 - alpha) times its per-row
                 normalisation factor, merged by id: zscore 1 / (std_u + 1e-8) (the offset
                 -mean_u / std_u is not attributed: not exact); max 1 / max_u |s| (no offset:
                 exact when both parts are)

`exact` (a bool for the whole call) says that for every (row, item) the sum of ALL contributions
(item_weight plus user_weight, with `top` large enough to hold them all) equals model.score.
A model kind not listed gets no contributors and exact False.

Memory: the contributions are built per (row, item) against the row's whole history: about
b x k x max |H(u)| floats (x the item's tokens for content_knn, x D for the learned models),
plus b x I for the per-row statistics of the hybrid and the blend.

Worked example (shapes): b = 2 rows, k = 5 items each, top = 3
    e = explain(model, H, items)                    H (2, I) CSR, items (2, 5)
    e.item_idx (2, 5, 3), e.item_weight (2, 5, 3), e.exact True for itemknn
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recsys.models.base import Model
from recsys.models.blend import Blend
from recsys.models.coldstart import filled_rows
from recsys.models.ease import EASE
from recsys.models.knn import ContentKNN, ItemKNN, UserKNN
from recsys.models.learned import Collaborative, Content, Hybrid, Scorer
from recsys.models.memory import MemoryModel
from recsys.sparse.csr import gather_rows
from recsys.sparse.similarity import Similarity, select_rows


@dataclass(frozen=True)
class Explanation:
    """What explain() returns: (b, k, top) tensors, -1 / 0 padded (see the module docstring)."""
    item_idx: torch.Tensor
    item_weight: torch.Tensor
    token_idx: torch.Tensor | None
    token_weight: torch.Tensor | None
    user_idx: torch.Tensor | None
    user_weight: torch.Tensor | None
    exact: bool


@dataclass
class _Part:
    """All contributions of one model, per (row, item) pair p = row * k + slot: for each kind
    ("item", "token", "user") ids (N, M) long (-1 = none) and weights (N, M)."""
    kinds: dict
    exact: bool


def explain(model: Model, H: torch.Tensor | None, items: torch.Tensor, top: int = 3, side=None,
            users: torch.Tensor | None = None) -> Explanation:
    """(b, k) recommended items of the (b, I) histories H -> their top contributors (module docstring)."""
    if top < 1:
        raise ValueError(f"top={top} must be >= 1")
    if H is None and users is None:
        raise ValueError("explain needs the histories H or the known users")
    items = items.long()
    b, k = items.shape
    with torch.no_grad():
        side = model.item_side() if side is None else side
        part = _explain(model, H, users, items, side)
    valid = (items >= 0).reshape(-1, 1)
    out = {}
    for kind in ("item", "token", "user"):
        if kind in part.kinds:
            ids, w = part.kinds[kind]
            ids, w = _top(*_merge(ids, w), top)
            ids, w = torch.where(valid, ids, -1), torch.where(valid, w, 0.0)
            out[kind] = (ids.reshape(b, k, top), w.reshape(b, k, top))
    if "item" not in out:
        out["item"] = (torch.full((b, k, top), -1, dtype=torch.long, device=items.device),
                       torch.zeros(b, k, top, device=items.device))
    tok, usr = out.get("token", (None, None)), out.get("user", (None, None))
    return Explanation(out["item"][0], out["item"][1], tok[0], tok[1], usr[0], usr[1], part.exact)


def _explain(model, H, users, items, side) -> _Part:
    """The contributions of the first class in the model's MRO that EXPLAINERS names."""
    for cls in type(model).__mro__:
        if cls in EXPLAINERS:
            return EXPLAINERS[cls](model, H, users, items, side)
    return _Part({}, False)                     # Popularity, and any kind with no contribution defined


# --- memory models: ItemKNN, ContentKNN, EASE, UserKNN --------------------------------------------

def _ease_pairs(model: EASE, j: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """B[j, i] for (P, L) history items j (-1 padded) and items i: c_j = x_uj B[j, i]."""
    return model.ease_B[j.clamp(min=0), i] * (j >= 0)


def _knn_pairs(model: ItemKNN, j: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """W[i, j] (candidate direction) or W[j, i] (history), normalised over the row's history
    entries when the model normalises (its own denominator)."""
    c = model.config
    a, bb = (i, j) if c.direction == "candidate" else (j, i)
    w, _ = _lookup(model.w_indptr, model.w_indices, model.w_values, a, bb, c.n_items)
    return w


def _item_based(model: MemoryModel, H: torch.Tensor, items: torch.Tensor, pairs, normalize: bool = False,
                tokens: bool = False) -> _Part:
    b, k = items.shape
    hist, x = _padded(H.crow_indices(), H.col_indices(), H.values().float(), torch.arange(b, device=items.device))
    prow = torch.arange(b, device=items.device).repeat_interleave(k)                    # (N,) row of each pair
    pitem = items.reshape(-1).clamp(min=0)                                               # (N,)

    def raw(r: torch.Tensor, i: torch.Tensor) -> torch.Tensor:                          # (P,), (P,) -> (P, L)
        j = hist[r]                                                                      # (P, L)
        w = pairs(model, j, i[:, None].expand_as(j))
        contrib = x[r] * w
        if normalize:
            den = w.abs().sum(1, keepdim=True)
            contrib = torch.where(den > 0, contrib / torch.where(den > 0, den, 1.0), 0.0)
        return contrib

    contrib = _with_fill(model, raw, prow, pitem)                                        # (N, L)
    kinds = {"item": (hist[prow], contrib)}
    if tokens:
        kinds["token"] = _shared_tokens(model, hist[prow], pitem, contrib)
    return _Part(kinds, True)


def _ease(model: EASE, H, users, items, side) -> _Part:
    return _item_based(model, _history(model, H, users), items, _ease_pairs)


def _itemknn(model: ItemKNN, H, users, items, side) -> _Part:
    return _item_based(model, _history(model, H, users), items, _knn_pairs, model.config.normalize)


def _content_knn(model: ContentKNN, H, users, items, side) -> _Part:
    return _item_based(model, _history(model, H, users), items, _knn_pairs, model.config.normalize, tokens=True)


def _shared_tokens(model: ContentKNN, hist: torch.Tensor, items: torch.Tensor, contrib: torch.Tensor):
    """(tokens (N, T), weights (N, T)): each history item's contribution (N, L) split over the
    tokens it shares with the item, in proportion to a_it a_jt (jaccard: equally)."""
    c = model.config
    tok, a_i = _padded(model.tok_indptr, model.tok_indices, model.tok_weights, items)     # (N, T)
    jj = hist[:, :, None].expand(-1, -1, tok.shape[1])                                 # (N, L, T)
    tt = tok[:, None, :].expand_as(jj)
    a_j, found = _lookup(model.tok_indptr, model.tok_indices, model.tok_weights, jj, tt, c.n_tokens)
    prod = found.float() if c.similarity == "jaccard" else a_i[:, None, :] * a_j        # (N, L, T)
    den = prod.sum(2, keepdim=True)
    share = torch.where(den != 0, prod / torch.where(den != 0, den, 1.0), 0.0)
    return tok, (contrib[:, :, None] * share).sum(1)                                    # (N, T)


def _userknn(model: UserKNN, H, users, items: torch.Tensor, side) -> _Part:
    c = model.config
    b, k = items.shape
    nb, nw = _neighbours(model, H, users, side)                                          # (b, K) each
    prow = torch.arange(b, device=items.device).repeat_interleave(k)
    pitem = items.reshape(-1).clamp(min=0)

    def raw(r: torch.Tensor, i: torch.Tensor) -> torch.Tensor:                          # -> (P, K)
        v = nb[r]
        xv, found = _lookup(model.hist_indptr, model.hist_indices, model.hist_values, v,
                            i[:, None].expand_as(v), c.n_items)
        contrib = nw[r] * xv
        if c.normalize:
            den = (nw[r].abs() * found).sum(1, keepdim=True)
            contrib = torch.where(den > 0, contrib / torch.where(den > 0, den, 1.0), 0.0)
        return contrib

    return _Part({"user": (nb[prow], _with_fill(model, raw, prow, pitem))}, True)


def _neighbours(model: UserKNN, H, users, side) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, K) neighbour users (-1 padded) and their weights W[u, v]: a known user's fitted W
    row, or, for a history, its k most similar known users as UserKNN.score_histories finds them."""
    c = model.config
    if users is not None:
        return _padded(side.W.crow_indices(), side.W.col_indices(), side.W.values(), users.long())
    X = model._hist()                                                                    # (U, I)
    U, b = c.n_users, H.shape[0]
    Z = torch.sparse_csr_tensor(torch.cat([X.crow_indices(), H.crow_indices()[1:] + X.crow_indices()[-1]]),
                                torch.cat([X.col_indices(), H.col_indices()]),
                                torch.cat([X.values(), H.values().to(X.values().dtype)]), (U + b, c.n_items))
    sim = Similarity(Z, c.similarity, c.shrink, c.dense_ratio).block(U, U + b)[:, :U].float()   # (b, U)
    v, i = torch.topk(sim, min(c.k, U), dim=1)
    keep = v > 0
    return torch.where(keep, i, -1), torch.where(keep, v, 0.0)


def _with_fill(model: MemoryModel, raw, prow: torch.Tensor, pitem: torch.Tensor) -> torch.Tensor:
    """raw(rows, items) -> (P, M) contributions along each row's contributor axis; a filled
    (cold) item gets sum_n M[c, n] raw(row, n), as coldstart.fill_scores gives its score."""
    if not model.has_fill:
        return raw(prow, pitem)
    filled = filled_rows(model.fill_indptr)[pitem]                                      # (N,)
    out = raw(prow, torch.where(filled, 0, pitem))                                      # placeholder for filled
    idx = torch.nonzero(filled).flatten()
    if len(idx) == 0:
        return out
    pos, owner = gather_rows(model.fill_indptr, pitem[idx])
    nbr = raw(prow[idx][owner], model.fill_indices[pos]) * model.fill_weights[pos, None].to(out.dtype)
    out[idx] = torch.zeros(len(idx), out.shape[1], dtype=out.dtype, device=out.device).index_add_(0, owner, nbr)
    return out


# --- the learned scorer -------------------------------------------------------------------------

def _learned(model: Scorer, H: torch.Tensor, items: torch.Tensor, side, cf: bool, content: bool):
    """The pieces of the learned parts' contributions, (b, k, L) against each row's history:
    `content` (C_j . C_i) / |H(u)| with the token weights w(i, t) (P . E_t) and P; `cos`
    cos(V_i, V_j) (as ranked); hist (b, L), it (b, k)."""
    b, k = items.shape
    rows = torch.arange(b, device=items.device)
    hist, _ = _padded(H.crow_indices(), H.col_indices(), None, rows)                    # (b, L)
    ok = hist >= 0
    it = items.clamp(min=0)
    out = {"hist": hist, "it": it}
    if content:
        C = side.C
        P = model.profile_from_items(H.crow_indices(), H.col_indices(), rows, C)         # (b, D)
        n = ok.sum(1).clamp(min=1).to(C.dtype)                                           # (b,) |H(u)|
        out["content"] = torch.einsum("bkd,bld->bkl", C[it], C[hist.clamp(min=0)]) * ok[:, None, :] / n[:, None, None]
        tok, w = _padded(model.tok_indptr, model.tok_indices, model.tok_weights, it.reshape(-1))
        E = model.token_table()
        tw = (w.reshape(b, k, -1) * torch.einsum("bktd,bd->bkt", E[tok.clamp(min=0)].reshape(b, k, -1, E.shape[1]), P))
        out["token"], out["P"] = (tok, tw.reshape(b * k, -1)), P
    if cf:
        Vn = F.normalize(side.V, dim=1)
        out["cos"] = torch.einsum("bkd,bld->bkl", Vn[it], Vn[hist.clamp(min=0)]) * ok[:, None, :]   # (b, k, L)
    return out


def _items_part(parts: dict, weights: torch.Tensor, kinds: dict, exact: bool) -> _Part:
    b, k = parts["it"].shape
    kinds["item"] = (parts["hist"].repeat_interleave(k, 0), weights.reshape(b * k, -1))
    return _Part(kinds, exact)


def _content(model: Content, H, users, items, side) -> _Part:
    p = _learned(model, _history(model, H, users), items, side, cf=False, content=True)
    return _items_part(p, p["content"], {"token": p["token"]}, True)


def _collaborative(model: Collaborative, H, users, items, side) -> _Part:
    p = _learned(model, _history(model, H, users), items, side, cf=True, content=False)
    return _items_part(p, p["cos"], {}, False)


def _hybrid(model: Hybrid, H, users, items, side) -> _Part:
    H = _history(model, H, users)
    p = _learned(model, H, items, side, cf=True, content=True)
    k = items.shape[1]
    a = float(model.alpha)
    s_ct = p["P"] @ side.C.T                                                             # (b, I)
    std_ct = torch.std(s_ct, dim=1)
    u = model.user_emb(users.long()) if users is not None else model.history_vectors(H, side)
    s_cf = u @ side.V.T + (side.b if side.b is not None else 0.0)                       # (b, I)
    std_cf, mean_cf = torch.std_mean(s_cf, dim=1, keepdim=True)
    z_cf = (s_cf.gather(1, p["it"]) - mean_cf) / (std_cf + 1e-8)                        # (b, k)
    k2 = (1 - a) / (std_ct + 1e-8)                                                       # (b,)
    pos = p["cos"].clamp(min=0)
    tot = pos.sum(2, keepdim=True)
    share = torch.where(tot > 0, pos / torch.where(tot > 0, tot, 1.0), 0.0)
    weights = k2[:, None, None] * p["content"] + a * z_cf[:, :, None] * share
    token = (p["token"][0], p["token"][1] * k2.repeat_interleave(k)[:, None])
    return _items_part(p, weights, {"token": token}, False)


# --- the blend ----------------------------------------------------------------------------------

def _blend(model: Blend, H, users, items: torch.Tensor, side) -> _Part:
    cfg = model.config
    k = items.shape[1]
    kinds: dict = {}
    exact = cfg.norm == "max"
    for part, part_side, coef in ((model.first, side.first, cfg.alpha), (model.second, side.second, 1 - cfg.alpha)):
        e = _explain(part, H, users, items, part_side)
        s = part.score(users.long() if users is not None else H, part_side)            # (b, I)
        if cfg.norm == "max":
            top = s.abs().amax(dim=1)
            f = 1.0 / torch.where(top > 0, top, torch.ones_like(top))
        else:
            f = 1.0 / (torch.std(s, dim=1) + 1e-8)
        scale = (coef * f).repeat_interleave(k)[:, None]                                 # (N, 1)
        for kind, (ids, w) in e.kinds.items():
            if kind in kinds:
                ids0, w0 = kinds[kind]
                kinds[kind] = (torch.cat([ids0, ids], 1), torch.cat([w0, w * scale], 1))
            else:
                kinds[kind] = (ids, w * scale)
        exact = exact and e.exact
    return _Part(kinds, exact)


EXPLAINERS = {Blend: _blend, Hybrid: _hybrid, Collaborative: _collaborative, Content: _content,
              UserKNN: _userknn, ContentKNN: _content_knn, ItemKNN: _itemknn, EASE: _ease}


# --- small CSR and padding helpers --------------------------------------------------------------

def _history(model, H, users) -> torch.Tensor:
    """H, or the model's stored history rows of `users` (values: ratings or ones)."""
    if H is not None:
        return H
    return select_rows(model._hist(), users.long())


def _padded(indptr, indices, values, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `rows` (R,) of a CSR matrix as (R, L) columns (-1 padded) and values (0 padded; 1
    for values None), L the longest of those rows."""
    pos, row_of = gather_rows(indptr, rows)
    lengths = indptr[rows + 1] - indptr[rows]
    L = int(lengths.max()) if len(rows) else 0
    within = torch.arange(len(pos), device=pos.device) - (torch.cumsum(lengths, 0) - lengths)[row_of]
    ids = torch.full((len(rows), L), -1, dtype=torch.long, device=pos.device)
    vals = torch.zeros(len(rows), L, device=pos.device)
    ids[row_of, within] = indices[pos].long()
    vals[row_of, within] = 1.0 if values is None else values[pos].float()
    return ids, vals


def _lookup(indptr, indices, values, r: torch.Tensor, c: torch.Tensor, n_cols: int):
    """(values at the entries (r, c) of a CSR matrix (0 where absent or r, c < 0), found (bool)),
    both of r's shape; reads only the rows that r names (one sort of their entries)."""
    shape = r.shape
    r, c = r.reshape(-1), c.reshape(-1)
    ok = (r >= 0) & (c >= 0)
    rows = torch.unique(r[ok])
    pos, row_of = gather_rows(indptr, rows)
    if len(pos) == 0:
        return torch.zeros(shape, device=r.device), torch.zeros(shape, dtype=torch.bool, device=r.device)
    keys, order = torch.sort(rows[row_of] * n_cols + indices[pos])
    vals = values[pos][order].float()
    q = r.clamp(min=0) * n_cols + c.clamp(min=0)
    at = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    found = ok & (keys[at] == q)
    return torch.where(found, vals[at], 0.0).reshape(shape), found.reshape(shape)


def _merge(ids: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M) ids (-1 = none) and weights -> the same with each id once per row (weights
    summed), ids ascending within a row."""
    N = ids.shape[0]
    if ids.numel() == 0:
        return ids, w
    span = int(ids.max()) + 2
    row = torch.arange(N, device=ids.device)[:, None].expand_as(ids)
    keys = (row * span + ids + 1).reshape(-1)
    uniq, inv = torch.unique(keys, return_inverse=True)
    tot = torch.zeros(len(uniq), dtype=w.dtype, device=w.device).index_add_(0, inv, w.reshape(-1))
    urow, uid = uniq // span, uniq % span - 1
    keep = uid >= 0
    urow, uid, tot = urow[keep], uid[keep], tot[keep]
    counts = torch.bincount(urow, minlength=N)
    M = int(counts.max()) if len(urow) else 0
    within = torch.arange(len(urow), device=ids.device) - (torch.cumsum(counts, 0) - counts)[urow]
    out_ids = torch.full((N, M), -1, dtype=torch.long, device=ids.device)
    out_w = torch.zeros(N, M, dtype=w.dtype, device=w.device)
    out_ids[urow, within], out_w[urow, within] = uid, tot
    return out_ids, out_w


def _top(ids: torch.Tensor, w: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top` entries of each row by |weight| (ties: lower id first), zero weights and -1 ids
    left out and padded back as -1 / 0."""
    N = ids.shape[0]
    live = (ids >= 0) & (w != 0)
    key = torch.where(live, w.abs(), -1.0)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :top]
    ids, w, live = ids.gather(1, order), w.gather(1, order), live.gather(1, order)
    ids, w = torch.where(live, ids, -1), torch.where(live, w, 0.0)
    if ids.shape[1] < top:
        pad = top - ids.shape[1]
        ids = torch.cat([ids, torch.full((N, pad), -1, dtype=torch.long, device=ids.device)], 1)
        w = torch.cat([w, torch.zeros(N, pad, dtype=w.dtype, device=w.device)], 1)
    return ids, w
