"""`Recommender`: external ids in, external ids out, over a loaded export.

    from recsys import Recommender
    rec = Recommender.from_pretrained("outputs/run/export", device="cpu")
    ids, scores = rec.recommend(["u1", "u2"], k=10)     # (2, 10) each
    ids, scores = rec.recommend("u1", k=10)             # (10,) each

Needs only torch, numpy and safetensors: no Lightning, no Hydra.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import torch

from recsys.eval.evaluation import evaluate
from recsys.eval.ranking import topk
from recsys.serve.archive import extract_archive, is_archive, write_archive
from recsys.serve.catalog import Catalog, id_array
from recsys.serve.export import load_export, save_export
from recsys.serve.request import AttributeIndex, answer, build_request, check_explain, check_k, indices, sub_rows
from recsys.sparse.csr import csr, pairs_in


class Recommender:
    def __init__(self, scorer, users, items, tokens, tokenizer, seen, token_idf, titles=None, meta=None,
                 attributes: dict[str, list[str]] | None = None):
        """attributes: {name: one string per item}, the item fields `where=` filters on."""
        self._cat = Catalog(scorer, items, id_array(items), titles, AttributeIndex(attributes), tokens, seen)
        self.users, self.tokens, self.tokenizer = users, tokens, tokenizer
        self._user_ids = id_array(users)               # the users never change: mapped back once
        self.seen = seen
        self.token_idf = token_idf
        self.meta = meta or {}

    @property
    def scorer(self):
        return self._cat.scorer

    @property
    def items(self):
        return self._cat.items

    @property
    def titles(self):
        return self._cat.titles

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    @classmethod
    def from_pretrained(cls, path, device: str = "cpu", verify: bool = True) -> "Recommender":
        """The export at `path`: a directory, or a zip of one (a path or a file object, as
        save_pretrained(file object) writes; recsys/serve/archive.py). recsys/serve/export.py
        checks every file before anything is built; verify: check the files against the
        export's checksums.json (a flipped byte is an error)."""
        if is_archive(path):
            with tempfile.TemporaryDirectory(prefix="recsys-export-") as d:
                extract_archive(path, d)
                return cls.from_pretrained(d, device, verify)
        e = load_export(path, device, verify)
        return cls(e["scorer"], e["users"], e["items"], e["tokens"], e["tokenizer"], e["seen"],
                   e["token_idf"], e["titles"], e["config"].get("meta"), e["attributes"])

    @property
    def attributes(self) -> dict[str, list[str]]:
        """{name: one string per item}: the item fields `where=` filters on."""
        return self._cat.attributes.attributes

    def save_pretrained(self, path):
        """Write the export to the directory `path` (returned), or, given a file object opened
        for writing in binary, a zip of it into that file (from_pretrained reads either)."""
        if hasattr(path, "write"):
            with tempfile.TemporaryDirectory(prefix="recsys-export-") as d:
                write_archive(self.save_pretrained(os.path.join(d, "export")), path)
            return path
        return save_export(path, self.scorer, self.users, self.items, self.tokens, self.tokenizer,
                           self.seen, self.token_idf, self.titles, self.meta, self.attributes)

    def add_items(self, items, item_col: str = "item", text_cols: list[str] | None = None) -> int:
        """Add new items to the catalog without retraining (recsys/models/extend.py): `items` is a
        DataFrame with an id column and text columns (default: those of the export's training
        text fields, `meta["text_fields"]`, that the frame has), tokenised with the stored
        tokenizer and weighted with the stored idf. They can be recommended at once, and
        save_pretrained keeps them. Returns the number of items added."""
        self._cat, n = self._cat.grown(items, item_col, text_cols, self.tokenizer, self.token_idf,
                                       self.meta.get("text_fields"))
        return n

    def user_index(self, users) -> torch.Tensor:
        try:
            idx = self.users.index(users)
        except KeyError as e:
            raise KeyError(f"unknown user id(s) {e.args[0].split(': ', 1)[-1]}: not in the training data") from None
        return torch.as_tensor(idx, device=self.device)

    @torch.no_grad()
    def scores(self, users) -> torch.Tensor:
        """(B, n_items) scores of users (one id or a list) against the whole catalog (nothing masked)."""
        single, batch = _ids_arg(users, "users")
        return self._cat.scorer(self.user_index(batch))

    @torch.no_grad()
    def recommend(self, users, k: int = 10, exclude_seen: bool = True, chunk_size: int = 1024,
                  unknown: str = "error", *, exclude=None, candidates=None, where=None, diversity=None,
                  explain=False, items=None):
        """Top-k items for one user id (-> (k',) ids, (k',) scores) or a list of ids (-> (B, w)).

        exclude_seen   leave out the items each user interacted with in training;
        exclude        ids to leave out for every user, or one list per user (a batch);
        candidates     rank only these item ids (only they are scored: the cost follows
                       the candidates, not the catalog);
        where          {attribute: value(s)}: only items whose kept attribute matches
                       (serve/request.py), e.g. where={"genres": "Comedy"};
        unknown        a user id not in the model: "error" raises KeyError naming it,
                       "popular" gives that user the most popular allowed items (score = count);
        diversity      re-rank for diversity (recsys/eval/rerank.py): {"method": "mmr" |
                       "popularity" | "calibration", "strength": s, "pool": candidates or
                       None}; None (default): the model's own order;
        explain        True (or the number of contributors, default 3): also return, per
                       recommended item, what contributed most to its score (models/explain.py):
                       (ids, scores, explanations), explanations[row][j] = {"items": [(id,
                       weight), ...], "tokens": [...], "users": [...]} (a single user: [j]).
        A left-out item is never returned: a user with fewer than k allowed items gets them all;
        in a batch such a row is padded (score NaN, id -1 or None; serve/request.py)."""
        single, batch = _ids_arg(users, "users")
        cat = self._cat                               # one catalog for the whole call
        k, explain = check_k(k), check_explain(explain)
        if unknown not in ("error", "popular"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'popular'")
        candidates = _renamed(candidates, items, "items", "candidates")
        req = build_request(cat.items, len(batch), single, self.device, exclude, candidates, where, cat.attributes)
        if unknown == "error":
            u = self.user_index(batch)
        else:
            u = torch.as_tensor(self.users.index(batch, missing="drop_flag"), device=self.device)
        known = (u >= 0).cpu().numpy()
        kk = min(k, len(cat.items))
        parts = []
        if known.any():
            pos = np.flatnonzero(known)
            idx, sc = topk(cat.scorer, u[torch.from_numpy(known).to(u.device)], kk,
                           self.seen if exclude_seen else None, chunk_size, side=cat.item_side(),
                           request=cat.diverse(sub_rows(req, pos), diversity, kk, self.seen))
            parts.append((pos, idx, sc))
        if not known.all():                 # unknown="popular": the most popular allowed items
            pos = np.flatnonzero(~known)
            parts.append((pos, *_popular(cat, sub_rows(req, pos), len(pos), kk, diversity, chunk_size)))
        out = answer(cat.item_ids, parts, len(batch), single)
        if explain:
            known_part = parts[:1] if known.any() else []
            users_t = u[torch.from_numpy(known).to(u.device)]
            out = out + (cat.explanations(known_part, len(batch), single, explain, self._user_ids, users=users_t),)
        return out

    @torch.no_grad()
    def recommend_for_history(self, items, k: int = 10, exclude_given: bool = True, unknown: str = "error", *,
                              exclude=None, candidates=None, where=None, diversity=None, explain=False,
                              empty: str = "error"):
        """Top-k items for a user who is not in the model, from the items they interacted with
        (external ids), without retraining: one history (a list, tuple, set, array or Series of
        ids) -> ((k',) ids, (k',) scores); a list of histories -> ((B, w), (B, w)). The history's
        items are left out unless exclude_given=False; exclude / candidates / where as
        `recommend`'s exclude / items / where (candidates: the ids to rank). unknown="error"
        refuses item ids outside the catalog, "ignore" drops them. UserKNN finds the history's
        neighbours among the known users. diversity, explain: as `recommend`'s. A history is a
        sequence, oldest first: the sequence model reads its order (an item given twice counts
        at its last place); the other models read it as a set."""
        single, hists = _histories_arg(items)
        cat = self._cat
        k, explain = check_k(k), check_explain(explain)
        if unknown not in ("error", "ignore"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'ignore'")
        rows = [_history_row(cat, h, unknown) for h in hists]
        if empty not in ("error", "popular"):
            raise ValueError(f"empty={empty!r} must be 'error' or 'popular'")
        has = np.array([len(r) > 0 for r in rows], dtype=bool)
        if empty == "error" and not has.all():
            r = int(np.flatnonzero(~has)[0])
            why = "every id in it is unknown" if len(hists[r]) else "it is empty"
            raise ValueError(f"{'history' if single else f'history[{r}]'}: no item of the catalog to rank from "
                             f"({why}); pass empty='popular' to rank such a history by popularity")
        req = build_request(cat.items, len(rows), single, self.device, exclude, candidates, where, cat.attributes)
        kk = min(k, len(cat.items))
        parts = []
        H = None
        if has.any():
            pos = np.flatnonzero(has)
            mine = [rows[r] for r in pos]
            indptr = np.zeros(len(mine) + 1, dtype=np.int64)
            np.cumsum([len(r) for r in mine], out=indptr[1:])
            given = (torch.from_numpy(indptr).to(self.device),      # rows in the order built above
                     torch.from_numpy(np.concatenate(mine).astype(np.int64)).to(self.device))
            idx, sc = topk(cat.scorer, torch.arange(len(mine), device=self.device), kk,
                           given if exclude_given else None, histories=given, side=cat.item_side(),
                           request=cat.diverse(sub_rows(req, pos), diversity, kk, given))
            parts.append((pos, idx, sc))
            H = torch.sparse_csr_tensor(given[0], given[1], torch.ones(len(given[1]), device=self.device),
                                        (len(mine), len(cat.items)))
        if not has.all():                 # empty='popular': nothing known, the most popular items
            pos = np.flatnonzero(~has)
            parts.append((pos, *_popular(cat, sub_rows(req, pos), len(pos), kk, diversity)))
        out = answer(cat.item_ids, parts, len(rows), single)
        if explain:
            out = out + (cat.explanations(parts[:1] if has.any() else [], len(rows), single, explain,
                                              self._user_ids, H=H),)
        return out

    @torch.no_grad()
    def similar_items(self, items, k: int = 10, *, space: str | None = None, exclude=None, candidates=None,
                      where=None, chunk_size: int = 1024):
        """The k items most similar to each given item (itself left out): one id -> ((k',) ids,
        (k',) similarities), a list -> ((B, w), (B, w)). space: the model's own by default
        (ItemKNN/ContentKNN: the neighbour lists, EASE: its weight columns, learned: cosine of
        the item vectors, collaborative / content / hybrid); "history": cosine of the items'
        user columns, "tokens": cosine of their TF-IDF token bags (any model; models/similar.py).
        exclude / candidates / where: as `recommend`'s."""
        single, batch = _ids_arg(items, "items")
        cat = self._cat
        k = check_k(k)
        q = indices(cat.items, batch, "items")
        side = cat.similarity_side("items", space)
        req = build_request(cat.items, len(q), single, self.device, exclude, candidates, where, cat.attributes,
                            self_rows=q)
        idx, sc = topk(cat.scorer, torch.as_tensor(q, device=self.device), min(k, len(cat.items)), None,
                       chunk_size, side=side, request=req, score=_similarity, n_cols=len(cat.items))
        return answer(cat.item_ids, [(np.arange(len(q)), idx, sc)], len(q), single)

    @torch.no_grad()
    def similar_users(self, users, k: int = 10, *, space: str | None = None, exclude=None, candidates=None,
                      chunk_size: int = 1024):
        """The k known users most similar to each given user (itself left out): one id -> ((k',)
        ids, (k',) similarities), a list -> ((B, w), (B, w)). space: the model's own by default
        (UserKNN: its neighbour lists, learned: cosine of the user vectors / content profiles),
        else "history": cosine of the users' training items. exclude: user ids to leave out;
        candidates: rank only these user ids."""
        single, batch = _ids_arg(users, "users")
        cat = self._cat
        k = check_k(k)
        q = indices(self.users, batch, "users")
        side = cat.similarity_side("users", space)
        req = build_request(self.users, len(q), single, self.device, exclude, candidates, self_rows=q)
        idx, sc = topk(cat.scorer, torch.as_tensor(q, device=self.device), min(k, len(self.users)), None,
                       chunk_size, side=side, request=req, score=_similarity, n_cols=len(self.users))
        return answer(self._user_ids, [(np.arange(len(q)), idx, sc)], len(q), single)

    def evaluate(self, users, items, ks=(10, 20), chunk_size: int = 1024, prefix: str = "test/",
                 diversity=None):
        """Full-ranking metrics of held-out (user, item) pairs given as external ids, with each
        user's seen items masked (of the re-ranked lists with `diversity`, as in recommend). Pairs whose user or item the model does not know, and pairs
        that are also seen items, are dropped and counted in the returned report.
        Returns (metrics {"test/ndcg@10": ...}, report {"pairs_used": ..., ...})."""
        users, items = _ids_arg(users, "users")[1], _ids_arg(items, "items")[1]
        if len(users) != len(items):
            raise ValueError(f"evaluate: users and items must pair up one to one, got {len(users)} users "
                             f"and {len(items)} items")
        cat = self._cat
        u = self.users.index(users, missing="drop_flag")
        i = cat.items.index(items, missing="drop_flag")
        report = {"pairs_given": int(len(u)), "dropped_unknown_user": int((u < 0).sum()),
                  "dropped_unknown_item": int(((u >= 0) & (i < 0)).sum())}
        ok = (u >= 0) & (i >= 0)
        pairs = np.unique(np.stack([u[ok], i[ok]], 1), axis=0) if ok.any() else np.zeros((0, 2), np.int64)
        also = pairs_in(pairs, *(t.cpu().numpy() for t in self.seen), len(cat.items))
        report["dropped_seen"] = int(also.sum())
        pairs = pairs[~also]
        report["pairs_used"] = int(len(pairs))
        report["users"] = int(len(np.unique(pairs[:, 0])))
        target = tuple(t.to(self.device) for t in csr(pairs, len(self.users)))
        rr, pool = (None, 0) if diversity is None else cat.reranker(diversity, max(ks), self.seen)
        metrics, _ = evaluate(cat.scorer, target, self.seen, ks, chunk_size, prefix, rerank=rr, pool=pool)
        return metrics, report


def _ids_arg(x, name: str) -> tuple[bool, list]:
    """(single, list of ids) from one id (str, number, 0-d array) or a collection of ids (list,
    tuple, array, Series, Index, set); None and other objects are a TypeError naming `name`."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x.item()
    if isinstance(x, (str, bytes)) or (np.isscalar(x) and not isinstance(x, bool)):
        return True, [x]
    if x is None or isinstance(x, (bool, dict)):
        raise TypeError(f"{name} must be an id or a list of ids, got {x!r}")
    if hasattr(x, "tolist"):                          # numpy arrays, pandas Series / Index: by position
        x = x.tolist()
    try:
        return False, list(x)
    except TypeError:
        raise TypeError(f"{name} must be an id or a list of ids, got {type(x).__name__}") from None


def _histories_arg(items) -> tuple[bool, list[list]]:
    """(single, histories): one history (ids) or a list of histories (lists of ids)."""
    single, ids = _ids_arg(items, "items")
    if single:
        raise TypeError(f"recommend_for_history takes a history (a list of item ids), got the single id {items!r}")
    if not ids or all(isinstance(h, (str, bytes)) or np.isscalar(h) for h in ids):
        return True, [ids]
    return False, [_ids_arg(h, "history")[1] for h in ids]


def _history_row(cat, h, unknown: str) -> np.ndarray:
    """A history's item indices: in the order given with a repeated item at its last place
    (a model that reads order), else sorted and once each; unknown ids refused or dropped."""
    idx = cat.items.index(h, missing="drop_flag") if h else np.zeros(0, np.int64)
    if unknown == "error" and (idx < 0).any():
        bad = [x for x, j in zip(h, idx) if j < 0][:5]
        raise KeyError(f"unknown item id(s) {bad} in the history (pass unknown='ignore' to drop them)")
    idx = idx[idx >= 0]
    if not cat.scorer.reads_order:
        return np.unique(idx)
    last = len(idx) - 1 - np.unique(idx[::-1], return_index=True)[1]
    return idx[np.sort(last)]


def _popular(cat, req, n: int, kk: int, diversity, chunk_size: int = 1024):
    """(idx, scores) of n rows ranked by training popularity (no history to rank from): the
    request's rows, its filters and the diversity re-ranker (history: none)."""
    dev = cat.scorer.device
    none = (torch.zeros(n + 1, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev))
    return topk(cat.scorer, torch.arange(n, device=dev), kk, None, chunk_size, side=cat.counts(),
                request=cat.diverse(req, diversity, kk, none), score=_constant_rows)


def _constant_rows(who, counts, cols, out, ws):
    """Every row scored by the same (I,) vector (the popular items of unknown users)."""
    c = counts if cols is None else counts[cols]
    return c.expand(len(who), -1).clone()


def _similarity(who, side, cols, out, ws):
    return side.score(who, cols)


def _renamed(new, old, old_name: str, new_name: str):
    """A keyword's value under its new name, or under the old name it replaces (with a
    DeprecationWarning); both at once is a TypeError."""
    if old is None:
        return new
    if new is not None:
        raise TypeError(f"pass {new_name}= only ({old_name}= is its old name)")
    warnings.warn(f"{old_name}= is now {new_name}= (one keyword name across recommend, recommend_for_history, "
                  f"similar_items, similar_users and HTTP)", DeprecationWarning, stacklevel=3)
    return old
