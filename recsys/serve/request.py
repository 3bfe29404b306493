"""Per-call arguments of the `Recommender` (external ids, attribute filters) turned into the
ranking's index tensors (eval/ranking.Request), and ranked rows turned back into answers.

    exclude   ids masked for every row, or one list per row (a batch: as many lists as rows)
    items     the candidate ids to rank (only those are scored)
    where     {attribute: value or list of values}: items whose attribute holds any of the
              values, several attributes all at once (an AND of ORs). An attribute is an item
              text field kept in the export (items.json "attributes", e.g. title, genres); a
              value matches, case-insensitively, the field's whole text or one of its words
              (split on whitespace and "|"): where={"genres": "comedy"} keeps every comedy.

Answers: one row -> (k',) ids and scores, the items it may get (k' <= k: masked items are left
out, never returned). A batch -> (B, w) arrays, w = min(k, the most any row may get); a row
with fewer items is padded at its end with score NaN and id -1 (integer ids) or None (string
ids).
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import torch

from recsys.eval.ranking import Request
from recsys.sparse.csr import csr, gather_rows

_SPLIT = re.compile(r"[\s|]+")


MAX_EXPLAIN = 100            # contributors per recommended item at most


def check_explain(explain) -> int:
    """explain= as the number of contributors per item: False or 0 none, True 3, or 1..MAX_EXPLAIN."""
    if explain is True:
        return 3
    if explain is False or explain is None:
        return 0
    if isinstance(explain, bool) or not isinstance(explain, (int, np.integer)) or not 0 <= explain <= MAX_EXPLAIN:
        raise ValueError(f"explain={explain!r} must be True, False or a number of contributors 0..{MAX_EXPLAIN}")
    return int(explain)


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    return int(k)


def _listlike(x) -> bool:
    return isinstance(x, (list, tuple, set, frozenset, np.ndarray)) or type(x).__name__ in ("Series", "Index")


def _as_list(x, name: str) -> list:
    if isinstance(x, (str, bytes)) or np.isscalar(x):
        return [x]
    if not _listlike(x):
        raise TypeError(f"{name} must be an id or a list of ids, got {type(x).__name__}")
    return x.tolist() if hasattr(x, "tolist") else list(x)


def indices(vocab, ids, name: str) -> np.ndarray:
    """Indices of external ids; an id outside the vocabulary is a KeyError naming `name`."""
    ids = _as_list(ids, name)
    idx = vocab.index(ids, missing="drop_flag") if ids else np.zeros(0, np.int64)
    if (idx < 0).any():
        bad = [i for i, j in zip(ids, idx) if j < 0][:5]
        raise KeyError(f"{name}: unknown id(s) {bad}")
    return idx


class AttributeIndex:
    """Per attribute, a map from each lower-cased word (and whole text) to the items holding it."""

    def __init__(self, attributes: dict[str, list[str]] | None):
        self.attributes = attributes or {}
        self._maps: dict[str, dict[str, np.ndarray]] = {}

    def _map(self, attr: str) -> dict[str, np.ndarray]:
        if attr not in self._maps:
            keys: dict[str, list[int]] = {}
            for i, text in enumerate(self.attributes[attr]):
                t = str(text).strip().lower()
                for w in {t, *_SPLIT.split(t)} - {""}:
                    keys.setdefault(w, []).append(i)
            self._maps[attr] = {w: np.asarray(v, dtype=np.int64) for w, v in keys.items()}
        return self._maps[attr]

    def select(self, where: dict, n_items: int) -> np.ndarray:
        """(I,) bool: the items that pass `where`."""
        if not isinstance(where, dict) or not where:
            raise TypeError(f"where must be a non-empty dict {{attribute: value(s)}}, got {where!r}")
        keep = np.ones(n_items, dtype=bool)
        for attr, values in where.items():
            if attr not in self.attributes:
                raise KeyError(f"where: no item attribute {attr!r} in this export (kept: {sorted(self.attributes)})")
            m = self._map(attr)
            hit = np.zeros(n_items, dtype=bool)
            for v in _as_list(values, f"where[{attr!r}]"):
                if not isinstance(v, (str, int, float, np.integer, np.floating)) or isinstance(v, bool):
                    raise TypeError(f"where[{attr!r}]: values must be strings or numbers, got {v!r}")
                ix = m.get(str(v).strip().lower())
                if ix is not None:
                    hit[ix[ix < n_items]] = True
            keep &= hit
        return keep


def build_request(vocab, n_rows: int, single: bool, device, exclude=None, candidates=None, where=None,
                  attributes: AttributeIndex | None = None, self_rows: np.ndarray | None = None) -> Request:
    """The Request of one call over n_rows rows whose columns are the ids of `vocab` (the items;
    the users for similar_users); candidates: the only columns ranked; self_rows: (n_rows,) a
    column to mask per row (similar items and users leave the query out)."""
    n = len(vocab)
    cols = None
    if candidates is not None:
        c = candidates.tolist() if hasattr(candidates, "tolist") else candidates
        if _listlike(candidates) and any(_listlike(x) for x in c):
            raise TypeError("candidates must be one list of ids (the same for every row)")
        cols = np.unique(indices(vocab, candidates, "candidates"))
    if where is not None:
        keep = (attributes or AttributeIndex(None)).select(where, n)
        cols = np.flatnonzero(keep) if cols is None else cols[keep[cols]]
    glob = None
    pairs = []
    if exclude is not None:
        ex = exclude.tolist() if hasattr(exclude, "tolist") else exclude
        per_row = _listlike(ex) and len(ex) > 0 and all(_listlike(x) for x in ex)
        if per_row:
            if single or len(ex) != n_rows:
                raise ValueError(f"exclude: {len(ex)} lists for {n_rows} row(s); give one list of ids for all "
                                 f"rows, or one list per row of a batch")
            for r, x in enumerate(ex):
                pairs += [(r, j) for j in indices(vocab, x, f"exclude[{r}]")]
        else:
            glob = np.unique(indices(vocab, ex, "exclude"))
    if self_rows is not None:
        pairs += [(r, int(j)) for r, j in enumerate(self_rows)]
    t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.long, device=device)
    rows = None
    if pairs:
        rows = tuple(x.to(device) for x in csr(np.unique(np.asarray(pairs, dtype=np.int64), axis=0), n_rows))
    return Request(items=t(cols), exclude=t(glob), exclude_rows=rows)


def sub_rows(req: Request, positions: np.ndarray) -> Request:
    """The request for a subset of the rows (positions into the call's rows), renumbered."""
    if req.exclude_rows is None:
        return req
    indptr, ind = req.exclude_rows
    p = torch.as_tensor(positions, dtype=torch.long, device=indptr.device)
    pos, row_of = gather_rows(indptr, p)
    lengths = indptr[p + 1] - indptr[p]
    new = torch.zeros(len(p) + 1, dtype=indptr.dtype, device=indptr.device)
    new[1:] = torch.cumsum(lengths, 0)
    return replace(req, exclude_rows=(new, ind[pos]))


def answer(ids_of: np.ndarray, parts: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]], n_rows: int, single: bool):
    """(ids, scores) from ranked parts [(positions (b,), columns (b, k'), scores (b, k'))]: -inf
    (masked) entries left out; see the module docstring for the shapes."""
    width = max((p[1].shape[1] for p in parts), default=0)
    idx = np.zeros((n_rows, width), dtype=np.int64)
    sc = np.full((n_rows, width), -np.inf, dtype=np.float32)
    for pos, i, v in parts:
        idx[pos, :i.shape[1]] = i.cpu().numpy()
        sc[pos, :v.shape[1]] = v.cpu().numpy()
    ok = ~(np.isneginf(sc) | np.isnan(sc))                                         # (B, width)
    if single:
        return ids_of[idx[0][ok[0]]], sc[0][ok[0]]
    if not ok.all():                         # valid entries first, in rank order; pad the rest
        order = np.argsort(~ok, axis=1, kind="stable")
        idx, sc, ok = (np.take_along_axis(a, order, 1) for a in (idx, sc, ok))
        w = int(ok.sum(1).max()) if n_rows else 0
        idx, sc, ok = idx[:, :w], sc[:, :w], ok[:, :w]
    ids = ids_of[idx]
    if not ok.all():
        if ids.dtype != object:
            ids = ids.astype(np.int64)
        ids[~ok] = None if ids.dtype == object else -1
        sc[~ok] = np.nan
    return ids, sc


def plain_value(x):
    """A numpy / torch scalar as the Python number it holds (anything else as it is)."""
    return x.item() if hasattr(x, "item") else x
