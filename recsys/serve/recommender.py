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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recsys.sparse.csr import csr, pairs_in
from recsys.eval.evaluation import evaluate
from recsys.models.popularity import popularity_counts
from recsys.serve.archive import extract_archive, is_archive, write_archive
from recsys.serve.export import load_export, save_export
from recsys.eval.ranking import topk
from recsys.serve.request import AttributeIndex, answer, build_request, check_explain, check_k, indices, sub_rows


@dataclass(frozen=True)
class _Catalog:
    """What add_items changes, swapped in one assignment: a call reads one snapshot, so it sees
    the old catalog or the new one, never a mix of the two."""
    scorer: Any
    items: Any
    item_ids: np.ndarray
    titles: list | None
    attributes: AttributeIndex = field(default_factory=lambda: AttributeIndex(None))
    cache: dict = field(default_factory=dict)      # what calls derive from this catalog, built once:
                                                   # item side, similarity sides, counts, bags


class Recommender:
    def __init__(self, scorer, users, items, tokens, tokenizer, seen, token_idf, titles=None, meta=None,
                 attributes: dict[str, list[str]] | None = None):
        """attributes: {name: one string per item}, the item fields `where=` filters on."""
        self._cat = _Catalog(scorer, items, _id_array(items), titles, AttributeIndex(attributes))
        self.users, self.tokens, self.tokenizer = users, tokens, tokenizer
        self._user_ids = _id_array(users)              # the users never change: mapped back once
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
    def _item_ids(self) -> np.ndarray:
        return self._cat.item_ids

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
        import pandas as pd

        from recsys.data.content import tfidf_bags
        from recsys.data.ids import conform_ids
        from recsys.models.extend import add_items
        if not isinstance(items, pd.DataFrame):
            raise TypeError(f"add_items takes a pandas DataFrame, got {type(items).__name__}")
        if item_col not in items.columns:
            raise KeyError(f"add_items: no id column {item_col!r} (columns are {list(items.columns)})")
        known = self.meta.get("text_fields") or []
        if text_cols is None:
            text_cols = [c for c in known if c in items.columns] or [c for c in items.columns if c != item_col]
        missing = [c for c in text_cols if c not in items.columns]
        if missing or not text_cols:
            raise KeyError(f"add_items: text column(s) {missing or text_cols} not in the frame "
                           f"(the model was trained on text fields {known})")
        # the catalog's id kind decides (recsys/data/ids.py): "1" is the integer 1 in an integer catalog
        ids = conform_ids(items[item_col], f"add_items, column {item_col!r}", self.items.ids, strict=True).tolist()
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()[:5]
            raise ValueError(f"add_items: duplicate item ids {dup}")
        clash = [i for i in ids if i in self.items][:5]
        if clash:
            raise ValueError(f"add_items: item ids {clash} are already in the catalog")
        if not ids:
            return 0
        texts = items[text_cols].fillna("").astype(str)
        docs = [self.tokenizer.tokenize_fields(dict(zip(text_cols, row))) for row in texts.itertuples(index=False)]
        bags = tfidf_bags(docs, self.tokens, idf=self.token_idf.cpu().numpy())
        old = self._cat
        grown = old.items.grown(ids)
        titles = None if old.titles is None else list(old.titles) + texts[text_cols[0]].tolist()
        attrs = {a: list(v) + (items[a].fillna("").astype(str).tolist() if a in items.columns else [""] * len(ids))
                 for a, v in old.attributes.attributes.items()}
        self._cat = _Catalog(add_items(old.scorer, bags).to(self.device).eval(), grown, _id_array(grown), titles,
                             AttributeIndex(attrs))
        return len(ids)

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
                           self.seen if exclude_seen else None, chunk_size, side=self._item_side(cat),
                           request=self._diverse(cat, sub_rows(req, pos), diversity, kk, self.seen))
            parts.append((pos, idx, sc))
        if not known.all():
            pos = np.flatnonzero(~known)
            counts = self._counts(cat)
            none = (torch.zeros(len(pos) + 1, dtype=torch.long, device=self.device),
                    torch.zeros(0, dtype=torch.long, device=self.device))
            idx, sc = topk(cat.scorer, torch.arange(len(pos), device=self.device), kk, None, chunk_size,
                           side=counts, request=self._diverse(cat, sub_rows(req, pos), diversity, kk, none),
                           score=_constant_rows)
            parts.append((pos, idx, sc))
        out = answer(cat.item_ids, parts, len(batch), single)
        if explain:
            known_part = parts[:1] if known.any() else []
            users_t = u[torch.from_numpy(known).to(u.device)]
            out = out + (self._explain(cat, known_part, len(batch), single, explain, users=users_t),)
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
        rows = []
        ordered = cat.scorer.reads_order
        for h in hists:
            idx = cat.items.index(h, missing="drop_flag") if h else np.zeros(0, np.int64)
            if unknown == "error" and (idx < 0).any():
                bad = [x for x, j in zip(h, idx) if j < 0][:5]
                raise KeyError(f"unknown item id(s) {bad} in the history (pass unknown='ignore' to drop them)")
            idx = idx[idx >= 0]
            if ordered:          # in the order given, a repeated item at its last place
                last = len(idx) - 1 - np.unique(idx[::-1], return_index=True)[1]
                rows.append(idx[np.sort(last)])
            else:
                rows.append(np.unique(idx))
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
                           given if exclude_given else None, histories=given, side=self._item_side(cat),
                           request=self._diverse(cat, sub_rows(req, pos), diversity, kk, given))
            parts.append((pos, idx, sc))
            H = torch.sparse_csr_tensor(given[0], given[1], torch.ones(len(given[1]), device=self.device),
                                        (len(mine), len(cat.items)))
        if not has.all():                 # empty='popular': nothing known, the most popular items
            pos = np.flatnonzero(~has)
            none = (torch.zeros(len(pos) + 1, dtype=torch.long, device=self.device),
                    torch.zeros(0, dtype=torch.long, device=self.device))
            idx, sc = topk(cat.scorer, torch.arange(len(pos), device=self.device), kk, None,
                           side=self._counts(cat), request=self._diverse(cat, sub_rows(req, pos), diversity, kk, none),
                           score=_constant_rows)
            parts.append((pos, idx, sc))
        out = answer(cat.item_ids, parts, len(rows), single)
        if explain:
            out = out + (self._explain(cat, parts[:1] if has.any() else [], len(rows), single, explain, H=H),)
        return out

    def _explain(self, cat, parts, n_rows: int, single: bool, top, users=None, H=None) -> list:
        """Per row, per returned item: {"items": [(item id, weight)], "tokens": [(token, weight)],
        "users": [(user id, weight)]} (models/explain.py); rows ranked by popularity (unknown
        users) get empty explanations."""
        from recsys.models.explain import explain
        out: list = [[] for _ in range(n_rows)]
        for pos, idx, sc in parts:
            idx = idx.masked_fill(torch.isinf(sc) & (sc < 0), -1)
            e = explain(cat.scorer, H, idx, top, users=users)
            for r, p in enumerate(pos):
                for j in range(idx.shape[1]):
                    if int(idx[r, j]) < 0:
                        continue
                    out[p].append({
                        "items": _pairs(cat.item_ids, e.item_idx[r, j], e.item_weight[r, j]),
                        "tokens": _pairs(self.tokens.ids, e.token_idx[r, j], e.token_weight[r, j])
                        if e.token_idx is not None else [],
                        "users": _pairs(self._user_ids, e.user_idx[r, j], e.user_weight[r, j])
                        if e.user_idx is not None else []})
        return out[0] if single else out

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
        side = self._similarity_side(cat, "items", space)
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
        side = self._similarity_side(cat, "users", space)
        req = build_request(self.users, len(q), single, self.device, exclude, candidates, self_rows=q)
        idx, sc = topk(cat.scorer, torch.as_tensor(q, device=self.device), min(k, len(self.users)), None,
                       chunk_size, side=side, request=req, score=_similarity, n_cols=len(self.users))
        return answer(self._user_ids, [(np.arange(len(q)), idx, sc)], len(q), single)

    def _diverse(self, cat, req, diversity, k: int, history):
        """req with the diversity re-ranker of this call (see _reranker)."""
        if diversity is None:
            return req
        from dataclasses import replace
        rr, pool = self._reranker(cat, diversity, k, history)
        return req if rr is None else replace(req, rerank=rr, pool=pool)

    def _reranker(self, cat, diversity, k: int, history):
        """(re-ranker or None, pool) of a diversity dict (eval/rerank.py from_config); history:
        CSR of each ranked row's items (calibration's user genre mix). The item-side inputs
        (token bags, genre distribution, counts) are built once per catalog."""
        from recsys.eval.rerank import from_config, item_bags, prefix_distribution
        if not isinstance(diversity, dict):
            raise TypeError(f"diversity must be a dict {{method, strength, pool}}, got {diversity!r}")
        if "bags" not in cat.cache:
            cat.cache["bags"] = item_bags(cat.scorer)
        genres = None
        if diversity.get("method") == "calibration" and cat.cache["bags"] is not None:
            key = ("genres", diversity.get("prefix", "genres:"))
            if key not in cat.cache:
                cat.cache[key] = prefix_distribution(cat.cache["bags"], self.tokens, key[1])[0]
            genres = cat.cache[key] if cat.cache[key].shape[1] else None
        return from_config(diversity, k=k, model=cat.scorer, tokens=self.tokens, history=history,
                           bags=cat.cache["bags"], counts=self._counts(cat), genres=genres)

    def _counts(self, cat) -> torch.Tensor:
        """(I,) training interactions per item (the popular fallback, the popularity penalty),
        counted once per catalog."""
        if "counts" not in cat.cache:
            cat.cache["counts"] = popularity_counts(self.seen[1], len(cat.items))
        return cat.cache["counts"]

    @staticmethod
    def _item_side(cat):
        """The model's item side (model.item_side()), computed once per catalog: the served
        model does not change between calls (add_items makes a new catalog)."""
        side = cat.cache.get("item_side")
        if side is None:
            side = cat.cache["item_side"] = cat.scorer.item_side()
        return side

    def _similarity_side(self, cat, of: str, space):
        """The model's similarity side, built once per catalog and space (models/similar.py)."""
        if space is not None and not isinstance(space, str):
            raise TypeError(f"space must be a string, got {space!r}")
        key = (of, space)
        side = cat.cache.get(key)
        if side is None:
            side = cat.cache[key] = cat.scorer.similarity_side(of, space)
        return side

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
        rr, pool = (None, 0) if diversity is None else self._reranker(cat, diversity, max(ks), self.seen)
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


def _constant_rows(who, counts, cols, out, ws):
    """Every row scored by the same (I,) vector (the popular items of unknown users)."""
    c = counts if cols is None else counts[cols]
    return c.expand(len(who), -1).clone()


def _pairs(ids, idx: torch.Tensor, w: torch.Tensor) -> list[tuple]:
    """[(external id, weight)] of the entries with idx >= 0."""
    return [(_plain(ids[int(i)]), float(x)) for i, x in zip(idx.tolist(), w.tolist()) if i >= 0]


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _similarity(who, side, cols, out, ws):
    return side.score(who, cols)


def _id_array(vocab) -> np.ndarray:
    """The vocabulary's external ids as an array (object dtype for string ids)."""
    return np.asarray(vocab.ids, dtype=object if any(isinstance(i, str) for i in vocab.ids) else None)


def _renamed(new, old, old_name: str, new_name: str):
    """A keyword's value under its new name, or under the old name it replaces (with a
    DeprecationWarning); both at once is a TypeError."""
    if old is None:
        return new
    if new is not None:
        raise TypeError(f"pass {new_name}= only ({old_name}= is its old name)")
    import warnings
    warnings.warn(f"{old_name}= is now {new_name}= (one keyword name across recommend, recommend_for_history, "
                  f"similar_items, similar_users and HTTP)", DeprecationWarning, stacklevel=3)
    return old
