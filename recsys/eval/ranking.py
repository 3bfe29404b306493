"""Full ranking in user chunks: scores for a chunk of users against every item, seen items
masked, top-k. Peak memory is O(chunk_size x n_items) floats whatever the number of users, and
a chunk is cut to at most MAX_BLOCK_FLOATS scores (1 GiB of float32: 268 users at a million items)."""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from recsys.sparse.csr import gather_rows
from recsys.sparse.similarity import select_rows
from recsys.sparse.spgemm import Workspace


def mask_seen(scores: torch.Tensor, users: torch.Tensor, seen_indptr: torch.Tensor,
              seen_indices: torch.Tensor, pos_of: torch.Tensor | None = None) -> torch.Tensor:
    """In place: scores (B, I) of `users` get -inf at each user's seen items; with pos_of
    ((I,) item -> column of `scores`, -1 for none), scores hold only some items' columns."""
    pos, row_of = gather_rows(seen_indptr, users)
    c = seen_indices[pos]
    if pos_of is not None:
        c = pos_of[c]
        row_of, c = row_of[c >= 0], c[c >= 0]
    scores[row_of, c] = float("-inf")
    return scores


def topk_rows(s: torch.Tensor, k: int, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores of each row of a (b, n) block and their columns, ordered by score,
    equal scores by column: ties break towards the lower item index, so a ranking (and every
    metric computed on it) is the same on any device and in any version, whatever torch.topk's
    own order (unspecified).

    When n is large, in two stages. Columns form G groups of `size` (a power of two) columns G
    apart, {g, g + G, g + 2G, ...}; the group maxima come from halving the block (elementwise
    max of its two halves, then of the result's two halves, ...: streaming passes, into ws's
    scratch); the top k lie among the elements of the k best groups (and the < size leftover
    columns), since an element outside them would be beaten by k larger group maxima. Several
    times faster than sorting 20,000 columns on a CPU. Rows where scores equal to the k-th tie
    across the cut are redone over the whole row (see _break_ties)."""
    b, n = s.shape
    size = 64
    while size > 8 and n // size < 4 * k:
        size //= 2
    G = n // size
    if G < 4 * k or not s.is_contiguous() or k == n:
        vals, idx = torch.topk(s, k, dim=1)
        return _break_ties(s, vals, idx, k, (s >= vals[:, -1:]).sum(1) > k)
    main = G * size
    v = s[:, :main].view(b, size, G)
    h = size // 2
    ws = ws if ws is not None else Workspace()
    m = ws.matrix("topk_fold", b, h * G, s.dtype, s.device).view(b, h, G)
    torch.maximum(v[:, :h], v[:, h:], out=m)                                   # (b, size/2, G)
    while h > 1:
        h //= 2
        torch.maximum(m[:, :h], m[:, h:2 * h], out=m[:, :h])
    gmax = m[:, 0]                                                             # (b, G)
    g = torch.topk(gmax, k, dim=1).indices                                     # (b, k) best groups
    idx = (g[:, :, None] + G * torch.arange(size, device=s.device)).flatten(1)  # (b, k * size) their columns
    if main < n:
        idx = torch.cat([idx, torch.arange(main, n, device=s.device).expand(b, -1)], 1)
    cand = torch.gather(s, 1, idx)                                             # (b, c)
    vals, j = torch.topk(cand, k, dim=1)
    theta = vals[:, -1:]                                                       # (b, 1) k-th score
    # a tie across the cut: more than k scores >= the k-th, among the candidates or in a group
    # left out (its maximum can equal the k-th score, never exceed it)
    tied = ((cand >= theta).sum(1) > k) | ((gmax >= theta).sum(1) > k)
    return _break_ties(s, vals, torch.gather(idx, 1, j), k, tied)


def _break_ties(s: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, k: int,
                tied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical top k: (vals, idx) hold the k largest values of each row of s; rows flagged in
    `tied` (b,) have more than k scores >= the k-th and get, over the whole row, every score
    above it plus the lowest columns holding it. Then every row is ordered by score, equal
    scores by column."""
    rows = torch.nonzero(tied).flatten()
    if len(rows):
        sr = s[rows]                                                           # (r, n)
        theta = vals[rows, -1:]                                                # (r, 1)
        above = sr > theta
        slots = k - above.sum(1, keepdim=True)                                 # (r, 1) places left for ties
        eq = sr == theta
        take = above | (eq & (torch.cumsum(eq, 1, dtype=torch.int32) <= slots))   # exactly k per row
        cols = torch.nonzero(take)[:, 1].view(len(rows), k)                    # ascending columns
        vals, idx = vals.clone(), idx.clone()
        vals[rows] = torch.gather(sr, 1, cols)
        idx[rows] = cols
    o = torch.argsort(idx, dim=1)                                              # by column, then
    idx, vals = torch.gather(idx, 1, o), torch.gather(vals, 1, o)
    o = torch.argsort(vals, dim=1, descending=True, stable=True)               # by score, stable
    return torch.gather(vals, 1, o), torch.gather(idx, 1, o)


MAX_BLOCK_FLOATS = 1 << 28      # scores of one chunk's block (1 GiB in float32), whatever chunk_size says

@dataclass(frozen=True)
class Request:
    """Per-call controls of a ranking pass (all optional; indices are internal item indices):

    items          (C,) sorted unique candidate columns: only these are scored (model.score_columns),
                   and only they can be returned;
    exclude        (E,) columns masked for every row;
    exclude_rows   CSR (indptr, indices) of columns masked per row, indexed by position in `rows`
                   (the per-call exclusion lists; the `exclude` argument of rank() is indexed by
                   the row values themselves: the training histories of known users);
    rerank         a re-ranker (recsys/eval/rerank.py): called per chunk with the rows, the top
                   `pool` (>= k) candidates (b, c) and their scores, returns the (b, k) items and
                   scores it keeps; masked candidates (-inf) are never kept.
    pool           candidates handed to rerank (0: k).
    """
    items: torch.Tensor | None = None
    exclude: torch.Tensor | None = None
    exclude_rows: tuple[torch.Tensor, torch.Tensor] | None = None
    rerank: Callable | None = None
    pool: int = 0



@torch.no_grad()
def rank(model, rows: torch.Tensor, k: int, exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
         chunk_size: int = 1024, histories: tuple[torch.Tensor, torch.Tensor] | None = None,
         side=None, request: Request | None = None, score: Callable | None = None,
         n_cols: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The one ranking path: yield (rows (b,), top-k columns (b, k), their scores (b, k)) chunk
    by chunk, for

    known users      rows = user indices (B,), histories None: model.score(users);
    given histories  histories = CSR (indptr, indices) of the histories of users outside the
                     model, rows = the ones to rank: model.score(their (b, I) sparse rows);
    anything else    score(who, side, cols, out, ws) -> (b, n) for the rows (e.g. the item or
                     user similarities of Recommender.similar_items / similar_users), over
                     n_cols columns (default: the catalog).

    exclude: CSR (indptr, indices) of columns to mask per row (indexed by the row values: seen
    items of known users, or the given histories themselves), or None to rank everything.
    request: per-call candidates, exclusions and re-ranking (Request). side: model.item_side(),
    when the caller already has it.
    Equal scores rank by column, lower first (topk_rows), on any device. A masked column can
    only appear when a row has fewer than k unmasked ones; its score is then -inf.

    Batch and single (the promise, on any CPU and on CUDA): a row ranked alone or among others
    gets the same scores up to float32 rounding (BLAS picks its kernel, and with it the order of
    each sum, by the number of rows: AVX2 and AVX-512 hosts, GEMV and GEMM differ in the last
    bits), so scores agree within a relative 1e-5 of the row's largest magnitude, and the ids
    are the same except that items whose scores lie within that tolerance of each other may
    swap places (exact ties within one call always rank by item index). tests/helpers.py
    same_ranking() checks exactly this.
    """
    req = request or Request()
    n_all = int(n_cols if n_cols is not None else model.config.n_items)
    cols, drop, pos_of = _column_plan(req, n_all)
    n = n_all if cols is None else len(cols)
    if not 0 < k <= n_all:
        raise ValueError(f"k={k} must be between 1 and the catalog size {n_all}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    chunk_size = min(chunk_size, max(1, MAX_BLOCK_FLOATS // max(n, 1)))    # huge catalogs: fewer rows a block
    k = min(k, n)
    pool = min(max(req.pool, k), n)
    width = min(chunk_size, len(rows))
    if side is None and score is None:
        side = model.item_side()
    own = score is None                 # the model's own scores (not a given score function)
    if own:
        score = model.score_columns
    H = None
    if histories is not None:
        indptr, indices = histories
        H = torch.sparse_csr_tensor(indptr, indices, torch.ones(len(indices), device=indices.device),
                                    (len(indptr) - 1, model.config.n_items))
    device = model.device
    starts = range(0, len(rows), chunk_size)
    local = threading.local()

    def chunk(start: int):
        r = rows[start:start + chunk_size]
        b = len(r)
        if n == 0:                                                 # nothing may be returned
            return r, torch.zeros(b, 0, dtype=torch.long, device=device), torch.zeros(b, 0, device=device)
        who = r if H is None else select_rows(H, r)
        if getattr(local, "ws", None) is None:
            local.ws = Workspace()                                 # scratch per worker
            # models that can write into a given block get one, reused from chunk to chunk: on
            # a CPU a fresh (chunk, I) allocation costs page faults worth more than the scoring
            local.buf = torch.empty(width * n, device=device) if own and model.writes_out else None
        out = None if local.buf is None else local.buf[:b * n].view(b, n)
        s = score(who, side, cols, out, local.ws)                  # (b, n)
        if drop is not None:
            s[:, drop] = float("-inf")
        if exclude is not None:
            mask_seen(s, r, *exclude, pos_of)
        if req.exclude_rows is not None:
            mask_seen(s, torch.arange(start, start + b, device=r.device), *req.exclude_rows, pos_of)
        v, i = topk_rows(s, pool, local.ws)                        # (b, pool)
        if cols is not None:
            i = cols[i]
        if req.rerank is not None:
            i, v = req.rerank(r, i, v, k)
        return r, i, v

    # Models whose work is partly single-threaded (the sparse KNN kernel) rank chunks on
    # several threads on the CPU, each with its own buffers; results keep the chunk order.
    workers = torch.get_num_threads() if (model.parallel_chunks and device.type == "cpu") else 1
    yield from _in_order(chunk, starts, workers)


def _column_plan(req: Request, n_all: int):
    """(cols: the candidate columns left after the request's exclusions, or None for all;
    drop: (E,) columns masked in every row of a full block, or None; pos_of: (n_all,) column ->
    its position among the candidates, -1 if none, or None)."""
    cols, drop = req.items, None
    if req.exclude is not None and len(req.exclude):
        if cols is None:
            drop = req.exclude
        else:                           # candidates: the excluded ones are not scored at all
            keep = torch.ones(n_all, dtype=torch.bool, device=req.exclude.device)
            keep[req.exclude] = False
            cols = cols[keep[cols]]
    pos_of = None
    if cols is not None:
        pos_of = torch.full((n_all,), -1, dtype=torch.long, device=cols.device)
        pos_of[cols] = torch.arange(len(cols), device=cols.device)
    return cols, drop, pos_of


def _in_order(chunk, starts, workers: int):
    """chunk(start) for each start, in order; on `workers` threads when more than one (at most
    2 chunks per worker in flight)."""
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            yield chunk(start)
        return
    todo = iter(starts)
    with ThreadPoolExecutor(workers) as ex:
        pending = deque(ex.submit(chunk, st) for _, st in zip(range(2 * workers), todo))
        while pending:
            yield pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(ex.submit(chunk, nxt))


def topk(model, rows: torch.Tensor, k: int, exclude=None, chunk_size: int = 1024, histories=None,
         side=None, request: Request | None = None, score=None, n_cols=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All chunks of rank() concatenated: (items (B, k'), scores (B, k')), k' = min(k, the
    columns that may be returned)."""
    items, scores = [], []
    for _, i, v in rank(model, rows, k, exclude, chunk_size, histories, side, request, score, n_cols):
        items.append(i)
        scores.append(v)
    if not items:
        dev = model.device
        return torch.zeros(0, k, dtype=torch.long, device=dev), torch.zeros(0, k, device=dev)
    return torch.cat(items), torch.cat(scores)
