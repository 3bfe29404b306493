"""Diversity-aware re-ranking: reorder the top `pool` candidates of each ranked row and keep k.

Three re-rankers, each a callable for eval/ranking.Request(rerank=..., pool=...):

    MMR(vectors, lam)                maximal marginal relevance (Carbonell & Goldstein 1998) over
                                     the items' L2-normalised TF-IDF token vectors: pick, one
                                     slot at a time, argmax lam * rel(i) - (1 - lam) * max over
                                     the items j already listed of cos(i, j); lam = 1: the
                                     original order.
    PopularityPenalty(counts, beta)  one pass: sort by rel(i) - beta * pop(i), pop(i) =
                                     log(1 + n_i) / log(1 + max n), n_i = training users of i;
                                     beta = 0: the original order.
    Calibrated(genres, history, lam) Steck, "Calibrated Recommendations" (RecSys 2018): pick,
                                     one slot at a time, argmax of the list's
                                     (1 - lam) * sum rel - lam * KL(p_u || q~), p_u the user's
                                     genre mix (mean of the history items' genre distributions),
                                     q the list's, q~ = (1 - a) q + a p_u (a = 0.01); lam = 0:
                                     the original order.

rel(i) is the score min-max normalised over the row's finite pool scores (1 = the row's best
candidate, 0 = its worst kept one; all 1 when they are equal), so one strength means the same on
every model whatever the scale of its scores. All three are vectorised over the rows ((b, c)
tensors, k greedy steps, no loop per user), deterministic, and batch-invariant: a row's result
is bit-identical whatever other rows share its chunk (its pairwise cosines are summed in token
order, its genre mix is computed once per row). A masked candidate (score -inf) is never picked
before a finite one; rows with fewer than k finite candidates get them first, then the masked
ones in their original order (the caller cuts them). The returned scores are the model's
scores of the kept items (so the list is no longer sorted by them).

    rr, pool = build("mmr", 0.3, k=10, bags=item_bags(model))        # lam = 1 - 0.3
    items, scores = topk(model, users, 10, seen, request=Request(rerank=rr, pool=pool))

`from_config({"method": "mmr", "strength": 0.3}, k=10, model=model, tokens=tokens,
history=seen)` does the same from the `diversity:` block of a config (evaluate.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from recsys.sparse.csr import gather_rows, row_ids

METHODS = ("mmr", "popularity", "calibration")
OFF = (None, "none", "null", "off", "")
ROW_BLOCK = 64              # rows whose pairwise cosines are built at once (bounds the memory)


def default_pool(k: int) -> int:
    """Candidates handed to a re-ranker for lists of k: max(50, 5 k)."""
    return max(50, 5 * int(k))


# --- shared pieces --------------------------------------------------------------------------

def relevance(scores: torch.Tensor) -> torch.Tensor:
    """(b, c) scores -> (b, c) min-max normalised over each row's finite entries, in [0, 1]
    (all 1 where a row's finite scores are equal); -inf stays -inf."""
    ok = torch.isfinite(scores)
    hi = scores.masked_fill(~ok, float("-inf")).amax(1, keepdim=True)      # (b, 1)
    lo = scores.masked_fill(~ok, float("inf")).amin(1, keepdim=True)       # (b, 1)
    span = hi - lo
    flat = ~(span > 0)                                                     # equal scores (or none finite)
    rel = (scores - lo) / torch.where(flat, torch.ones_like(span), span)
    rel = torch.where(flat, torch.ones_like(rel), rel)
    return rel.masked_fill(~ok, float("-inf"))


def _check_range(name: str, value: float, lo: float, hi: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a number") from None
    if not (lo <= v <= hi):
        rng = f"[{lo:g}, {hi:g}]" if hi < math.inf else f"[{lo:g}, inf)"
        raise ValueError(f"{name}={value} is outside {rng}")
    return v


def _unit_csr(vectors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(indptr, indices, values (float64), n_cols) of the rows scaled to unit L2 norm, from a
    CSR triple (indptr, indices, weights), a sparse CSR tensor or a dense (I, T) tensor."""
    if isinstance(vectors, (tuple, list)):
        indptr, indices, w = vectors
        n_cols = int(indices.max()) + 1 if len(indices) else 1
    else:
        X = vectors if vectors.layout == torch.sparse_csr else vectors.to_sparse_csr()
        indptr, indices, w, n_cols = X.crow_indices(), X.col_indices(), X.values(), X.shape[1]
    w = w.double()
    row = row_ids(indptr)
    sq = torch.zeros(len(indptr) - 1, dtype=torch.float64, device=w.device).index_add_(0, row, w * w)
    inv = torch.where(sq > 0, sq.rsqrt(), torch.zeros_like(sq))
    return indptr.long(), indices.long(), w * inv[row], int(n_cols)


def pool_cosines(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_cols: int,
                 idx: torch.Tensor) -> torch.Tensor:
    """(b, c, c) cosines between the pool items idx (b, c) of each row, from unit rows in CSR.

    A sparse self-join: the row's (item, token) entries sorted by token, every pair of entries
    sharing a token adds w_a * w_b, in float64, in token order, so the sums of a row do not
    depend on the other rows (batch invariance)."""
    b, c = idx.shape
    out = []
    for s in range(0, b, ROW_BLOCK):
        blk = idx[s:s + ROW_BLOCK]
        nb = len(blk)
        pos, e_item = gather_rows(indptr, blk.reshape(-1))                    # entries of the pool items
        tok, w = indices[pos], values[pos]
        r, p = e_item // c, e_item % c                                        # row in block, pool slot
        key = r * n_cols + tok                                                # (E,) same row and token
        o = torch.argsort(key * c + p)
        key, p, w, r = key[o], p[o], w[o], r[o]
        E = len(key)
        S = torch.zeros(nb * c * c, dtype=torch.float64, device=idx.device)
        if E:
            new = torch.ones(E, dtype=torch.bool, device=idx.device)
            new[1:] = key[1:] != key[:-1]
            start = torch.nonzero(new).flatten()                              # (g,) group starts
            size = torch.diff(torch.cat([start, start.new_tensor([E])]))      # (g,)
            gid = torch.cumsum(new.long(), 0) - 1                             # (E,) group of entry
            m = size[gid]                                                     # (E,) its group's size
            src = torch.repeat_interleave(torch.arange(E, device=idx.device), m)   # (P,) pairs
            first = torch.cumsum(m, 0) - m
            partner = start[gid][src] + torch.arange(len(src), device=idx.device) - first[src]
            flat = r[src] * (c * c) + p[src] * c + p[partner]
            S.index_add_(0, flat, w[src] * w[partner])
        out.append(S.view(nb, c, c))
    return torch.cat(out).float() if out else torch.zeros(0, c, c)


def _greedy(objective, ok: torch.Tensor, k: int, update) -> torch.Tensor:
    """(b, k) pool slots picked one at a time: argmax of objective(t) (b, c) over the finite,
    not yet taken candidates (ties: the lower slot, i.e. the original order); rows out of
    finite candidates take their first untaken slot. update(pick (b,)) follows each step."""
    b, c = ok.shape
    taken = torch.zeros(b, c, dtype=torch.bool, device=ok.device)
    picks = torch.empty(b, k, dtype=torch.long, device=ok.device)
    ar = torch.arange(b, device=ok.device)
    for t in range(k):
        free = ok & ~taken
        obj = objective(t).masked_fill(~free, float("-inf"))
        pick = torch.where(free.any(1), obj.argmax(1), (~taken).int().argmax(1))
        picks[:, t] = pick
        taken[ar, pick] = True
        update(pick)
    return picks


def _keep(idx, scores, picks):
    return torch.gather(idx, 1, picks), torch.gather(scores, 1, picks)


# --- the re-rankers -------------------------------------------------------------------------

class MMR:
    """Maximal marginal relevance over unit TF-IDF vectors: slot by slot, argmax of
    lam * rel(i) - (1 - lam) * max_{j listed} cos(i, j). vectors: the items' token vectors, a
    CSR triple (indptr, indices, weights) over the items, a sparse CSR or a dense (I, T) tensor
    (rows are L2-normalised here). lam in [0, 1]; 1 keeps the original order."""

    def __init__(self, vectors, lam: float):
        self.lam = _check_range("lam", lam, 0.0, 1.0)
        self.indptr, self.indices, self.values, self.n_cols = _unit_csr(vectors)

    def __call__(self, rows, idx, scores, k):
        b, c = idx.shape
        k = min(k, c)
        ok = torch.isfinite(scores)
        rel = relevance(scores)                                              # (b, c)
        S = pool_cosines(self.indptr, self.indices, self.values, self.n_cols, idx)   # (b, c, c)
        near = torch.zeros(b, c, device=idx.device)                          # max cos to the list
        ar = torch.arange(b, device=idx.device)
        lam = self.lam

        def update(pick):
            torch.maximum(near, S[ar, pick], out=near)

        picks = _greedy(lambda t: lam * rel - (1 - lam) * near, ok, k, update)
        return _keep(idx, scores, picks)


class PopularityPenalty:
    """Sort the pool by rel(i) - beta * log(1 + n_i) / log(1 + max n); counts (I,) = n_i, the
    training users of each item. beta >= 0; 0 keeps the original order."""

    def __init__(self, counts: torch.Tensor, beta: float):
        self.beta = _check_range("beta", beta, 0.0)
        c = torch.log1p(counts.double().clamp_min(0))
        top = float(c.max()) if len(c) else 0.0
        self.pop = (c / top if top > 0 else torch.zeros_like(c)).float()    # (I,) in [0, 1]

    def __call__(self, rows, idx, scores, k):
        k = min(k, idx.shape[1])
        ok = torch.isfinite(scores)
        s = (relevance(scores) - self.beta * self.pop.to(idx.device)[idx]).masked_fill(~ok, float("-inf"))
        picks = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
        return _keep(idx, scores, picks)


class Calibrated:
    """Steck 2018's calibrated list: slot by slot, the candidate that maximises
    (1 - lam) * rel(i) - lam * KL(p_u || q~(list + i)), i.e. the greedy of
    (1 - lam) * sum rel - lam * KL over the list.

    genres   (I, G) each item's genre distribution (rows sum to 1, or 0 for an item without
             genres: it does not count in q), e.g. prefix_distribution(...);
    history  CSR (indptr, indices) of each row's items (indexed by the row values rank() hands
             over: user indices, or positions in the given histories); p_u = the mean of its
             items' genre rows, normalised (uniform weights);
    q        the list's genre mix (the mean of its items' rows, normalised);
    lam in [0, 1]; 0 keeps the original order. alpha: the smoothing a of q~ (0.01)."""

    def __init__(self, genres: torch.Tensor, history: tuple[torch.Tensor, torch.Tensor], lam: float,
                 alpha: float = 0.01):
        self.lam = _check_range("lam", lam, 0.0, 1.0)
        self.alpha = _check_range("alpha", alpha, 0.0, 1.0)
        self.genres = genres.float()                                         # (I, G)
        indptr, indices = history
        pos, row = gather_rows(indptr, torch.arange(len(indptr) - 1, device=indptr.device))
        G = self.genres.shape[1]
        P = torch.zeros(len(indptr) - 1, G, dtype=torch.float64, device=self.genres.device)
        P.index_add_(0, row.to(P.device), self.genres.double()[indices[pos].to(P.device)])
        mass = P.sum(1, keepdim=True)
        self.p = (P / torch.where(mass > 0, mass, torch.ones_like(mass))).float()   # (R, G) each row's mix

    def __call__(self, rows, idx, scores, k):
        b, c = idx.shape
        k = min(k, c)
        ok = torch.isfinite(scores)
        rel = relevance(scores)
        p = self.p.to(idx.device)[rows][:, None, :]                          # (b, 1, G)
        Pc = self.genres.to(idx.device)[idx]                                 # (b, c, G)
        qsum = torch.zeros(b, 1, Pc.shape[2], device=idx.device)             # (b, 1, G) listed so far
        has = p > 0
        logp = torch.log(torch.where(has, p, torch.ones_like(p)))
        lam, a = self.lam, self.alpha
        ar = torch.arange(b, device=idx.device)

        def objective(t):
            num = qsum + Pc                                                  # (b, c, G)
            mass = num.sum(2, keepdim=True)
            q = num / torch.where(mass > 0, mass, torch.ones_like(mass))
            qt = (1 - a) * q + a * p
            kl = torch.where(has, p * (logp - torch.log(torch.where(has, qt, torch.ones_like(qt)).clamp_min(1e-30))),
                             torch.zeros_like(qt)).sum(2)                    # (b, c)
            return (1 - lam) * rel - lam * kl

        def update(pick):
            qsum[:, 0] += Pc[ar, pick]

        picks = _greedy(objective, ok, k, update)
        return _keep(idx, scores, picks)


# --- item features from a model -------------------------------------------------------------

def item_bags(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The items' TF-IDF token bags (tok_indptr, tok_indices, tok_weights) a model keeps (the
    learned Scorer, memory models fitted with tokens), looking into a Blend's parts (first, then
    second); None when no part keeps them."""
    if model is None:
        return None
    if all(isinstance(getattr(model, n, None), torch.Tensor) for n in ("tok_indptr", "tok_indices", "tok_weights")):
        return model.tok_indptr, model.tok_indices, model.tok_weights
    for part in ("first", "second"):
        found = item_bags(getattr(model, part, None))
        if found is not None:
            return found
    return None


def prefix_distribution(bags, token_ids, prefix: str = "genres:") -> tuple[torch.Tensor, list[str]]:
    """(I, G) each item's distribution over the tokens whose name starts with `prefix` (the word
    tokenizer writes the tokens of a prefix field as "genres:comedy"), uniform over the item's
    such tokens (Steck's p(g|i)); an item with none has a zero row. Also the G token names.
    bags: (indptr, indices, weights) over the items; token_ids: the token vocabulary (a Vocab
    or a list of names, index = token id)."""
    names = list(getattr(token_ids, "ids", token_ids))
    cols = [t for t, n in enumerate(names) if isinstance(n, str) and n.startswith(prefix)]
    indptr, indices = bags[0], bags[1]
    n_items = len(indptr) - 1
    col_of = torch.full((len(names),), -1, dtype=torch.long)
    col_of[torch.tensor(cols, dtype=torch.long)] = torch.arange(len(cols))
    g = col_of[indices.cpu()]
    item = row_ids(indptr.cpu())
    D = torch.zeros(n_items, len(cols))
    D[item[g >= 0], g[g >= 0]] = 1.0
    n = D.sum(1, keepdim=True)
    return D / torch.where(n > 0, n, torch.ones_like(n)), [names[t] for t in cols]


# --- building one from a method name or a config ---------------------------------------------

@dataclass(frozen=True)
class Diversity:
    """The `diversity:` config block: method (none | mmr | popularity | calibration), strength
    (0 = the model's own order, more = more diverse: mmr lam = 1 - strength and calibration
    lam = strength, both in [0, 1]; popularity beta = strength >= 0), pool (candidates re-ranked,
    None: max(50, 5 k)), prefix (the genre tokens calibration uses)."""
    method: str | None = None
    strength: float = 0.0
    pool: int | None = None
    prefix: str = "genres:"


def build(method: str | None, strength: float = 0.0, *, k: int, pool: int | None = None, bags=None,
          counts: torch.Tensor | None = None, history=None, genres: torch.Tensor | None = None,
          name: str = "diversity"):
    """(re-ranker or None, pool) for rank()'s Request. bags: the items' token bags (mmr);
    counts (I,): training users per item (popularity); genres (I, G) and history CSR indexed
    like the ranked rows (calibration). Errors name the config key (`name`.strength, ...)."""
    if method in OFF:
        return None, 0
    if method not in METHODS:
        raise ValueError(f"{name}.method={method!r} is not one of none, {', '.join(METHODS)}")
    s = _check_range(f"{name}.strength", strength, 0.0, math.inf if method == "popularity" else 1.0)
    p = default_pool(k) if pool is None else pool
    if isinstance(p, bool) or not isinstance(p, int) or p < k:
        raise ValueError(f"{name}.pool={pool!r} must be an integer >= k={k} (or null for max(50, 5k))")
    if method == "mmr":
        if bags is None:
            raise ValueError(f"{name}.method=mmr needs the items' token vectors, and this model keeps none")
        return MMR(bags, 1.0 - s), p
    if method == "popularity":
        if counts is None:
            raise ValueError(f"{name}.method=popularity needs the items' training counts")
        return PopularityPenalty(counts, s), p
    if genres is None or history is None:
        raise ValueError(f"{name}.method=calibration needs the items' genres and the users' histories")
    return Calibrated(genres, history, s), p


def from_config(cfg: Mapping | None, *, k: int, model=None, tokens=None, history=None, bags=None,
                counts: torch.Tensor | None = None, genres: torch.Tensor | None = None,
                name: str = "diversity"):
    """(re-ranker or None, pool) from a `diversity:` block {method, strength, pool, prefix}
    (a dict; a Hydra node converted at the edge). What the method needs comes from the
    arguments, or else from the model: its token bags (item_bags), popularity = the item counts
    of `history`, genres = prefix_distribution(bags, tokens, prefix). history: CSR of each ranked
    row's items (for evaluation, the seen items of the users)."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(Diversity.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown} (keys: method, strength, pool, prefix)")
    d = Diversity(**cfg)
    if d.method in OFF:
        return None, 0
    if d.method in ("mmr", "calibration") and bags is None:
        bags = item_bags(model)
    if d.method == "popularity" and counts is None and history is not None:
        n = int(model.config.n_items) if model is not None else int(history[1].max()) + 1
        counts = torch.bincount(history[1].cpu(), minlength=n)
    if d.method == "calibration" and genres is None and bags is not None:
        if tokens is None:
            raise ValueError(f"{name}.method=calibration needs the token vocabulary (the genre tokens)")
        genres = prefix_distribution(bags, tokens, d.prefix)[0]
        if genres.shape[1] == 0:
            raise ValueError(f"{name}.prefix={d.prefix!r} matches no token of this model, so calibration has no "
                             f"genres (the word tokenizer writes them for data.tokens.prefix_fields)")
    return build(d.method, d.strength, k=k, pool=d.pool, bags=bags, counts=counts, history=history,
                 genres=genres, name=name)
