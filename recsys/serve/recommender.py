"""`Recommender`: external ids in, external ids out, over a loaded export.

    from recsys import Recommender
    rec = Recommender.from_pretrained("outputs/run/export", device="cpu")
    ids, scores = rec.recommend(["u1", "u2"], k=10)     # (2, 10) each
    ids, scores = rec.recommend("u1", k=10)             # (10,) each

Needs only torch, numpy and safetensors: no Lightning, no Hydra.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsys.sparse.csr import csr, pairs_in
from recsys.eval.evaluation import evaluate
from recsys.models.popularity import popularity_counts
from recsys.serve.export import load_export, save_export
from recsys.eval.ranking import topk


@dataclass(frozen=True)
class _Catalog:
    """What add_items changes, swapped in one assignment: a call reads one snapshot, so it sees
    the old catalog or the new one, never a mix of the two."""
    scorer: Any
    items: Any
    item_ids: np.ndarray
    titles: list | None


class Recommender:
    def __init__(self, scorer, users, items, tokens, tokenizer, seen, token_idf, titles=None, meta=None):
        self._cat = _Catalog(scorer, items, _id_array(items), titles)
        self.users, self.tokens, self.tokenizer = users, tokens, tokenizer
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
    def from_pretrained(cls, path: str, device: str = "cpu") -> "Recommender":
        e = load_export(path, device)
        return cls(e["scorer"], e["users"], e["items"], e["tokens"], e["tokenizer"], e["seen"],
                   e["token_idf"], e["titles"], e["config"].get("meta"))

    def save_pretrained(self, path: str) -> str:
        return save_export(path, self.scorer, self.users, self.items, self.tokens, self.tokenizer,
                           self.seen, self.token_idf, self.titles, self.meta)

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
        from recsys.data.vocab import Vocab
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
        grown = Vocab(old.items.ids + ids, unk=old.items.unk)
        titles = None if old.titles is None else list(old.titles) + texts[text_cols[0]].tolist()
        self._cat = _Catalog(add_items(old.scorer, bags).to(self.device).eval(), grown, _id_array(grown), titles)
        return len(ids)

    def user_index(self, users) -> torch.Tensor:
        try:
            idx = self.users.index(users)
        except KeyError as e:
            raise KeyError(f"unknown user id(s) {e.args[0].split(': ', 1)[-1]}: not in the training data") from None
        return torch.as_tensor(idx, device=self.device)

    @staticmethod
    def _check_k(k, n_items: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {k!r}")
        if not 0 < k <= n_items:
            raise ValueError(f"k={k} must be between 1 and the catalog size {n_items}")

    @torch.no_grad()
    def scores(self, users) -> torch.Tensor:
        """(B, n_items) scores of users (one id or a list) against the whole catalog (nothing masked)."""
        single, batch = _ids_arg(users, "users")
        return self._cat.scorer(self.user_index(batch))

    @torch.no_grad()
    def recommend(self, users, k: int = 10, exclude_seen: bool = True, chunk_size: int = 1024,
                  unknown: str = "error"):
        """Top-k items for one user id (-> (k,) ids, (k,) scores) or a list of ids (-> (B, k)).
        exclude_seen drops the items each user interacted with in training; an excluded item is
        never returned: one user with fewer than k items left gets them all (fewer than k), a
        batch asking for more than one of its users has left is a ValueError naming that user.
        A user id not in the model: unknown="error" raises KeyError naming it;
        unknown="popular" gives that user the k items with the most training interactions
        (score = their count)."""
        single, batch = _ids_arg(users, "users")
        cat = self._cat                               # one catalog for the whole call
        self._check_k(k, len(cat.items))
        if unknown not in ("error", "popular"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'popular'")
        if unknown == "error":
            u = self.user_index(batch)
        else:
            u = torch.as_tensor(self.users.index(batch, missing="drop_flag"), device=self.device)
        known = (u >= 0).cpu().numpy()
        ids = np.empty((len(batch), int(k)), dtype=cat.item_ids.dtype)
        sc = np.zeros((len(batch), int(k)), dtype=np.float32)
        if known.any():
            idx, s = topk(cat.scorer, u[torch.from_numpy(known).to(u.device)], int(k),
                          self.seen if exclude_seen else None, chunk_size)
            ids[known], sc[known] = cat.item_ids[idx.cpu().numpy()], s.cpu().numpy()
        if not known.all():
            v, i = torch.topk(popularity_counts(self.seen[1], len(cat.items)), int(k))
            ids[~known], sc[~known] = cat.item_ids[i.cpu().numpy()], v.cpu().numpy()
        return _cut_excluded(ids, sc, single, batch, "user")

    @torch.no_grad()
    def recommend_for_history(self, items, k: int = 10, exclude_given: bool = True, unknown: str = "error"):
        """Top-k items for a user who is not in the model, from the items they interacted with
        (external ids), without retraining: one history (a list, tuple, set, array or Series of
        ids) -> ((k,) ids, (k,) scores); a list of histories -> ((B, k), (B, k)). The history's
        items are excluded unless exclude_given=False (and never returned: see `recommend` for
        fewer than k left). unknown="error" refuses item ids outside the catalog, "ignore" drops
        them. UserKNN finds the history's neighbours among the known users."""
        single, hists = _histories_arg(items)
        cat = self._cat
        self._check_k(k, len(cat.items))
        if unknown not in ("error", "ignore"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'ignore'")
        rows = []
        for h in hists:
            idx = cat.items.index(h, missing="drop_flag") if h else np.zeros(0, np.int64)
            if unknown == "error" and (idx < 0).any():
                bad = [x for x, j in zip(h, idx) if j < 0][:5]
                raise KeyError(f"unknown item id(s) {bad} in the history (pass unknown='ignore' to drop them)")
            rows.append(np.unique(idx[idx >= 0]))
        pairs = np.array([(r, j) for r, h in enumerate(rows) for j in h], dtype=np.int64).reshape(-1, 2)
        given = tuple(t.to(self.device) for t in csr(pairs, len(rows)))
        idx, sc = topk(cat.scorer, torch.arange(len(rows), device=self.device), int(k),
                       given if exclude_given else None, histories=given)
        return _cut_excluded(cat.item_ids[idx.cpu().numpy()], sc.cpu().numpy(), single, list(range(len(rows))),
                             "history")

    def evaluate(self, users, items, ks=(10, 20), chunk_size: int = 1024, prefix: str = "test/"):
        """Full-ranking metrics of held-out (user, item) pairs given as external ids, with each
        user's seen items masked. Pairs whose user or item the model does not know, and pairs
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
        metrics, _ = evaluate(cat.scorer, target, self.seen, ks, chunk_size, prefix)
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


def _cut_excluded(ids: np.ndarray, sc: np.ndarray, single: bool, who: list, what: str):
    """Never hand out an excluded item (score -inf): one row is cut to its allowed items; in a
    batch, a row with fewer allowed items than k is an error naming it."""
    bad = ~np.isfinite(sc) & (sc < 0)
    if single:
        return ids[0][~bad[0]], sc[0][~bad[0]]
    if bad.any():
        r = int(np.flatnonzero(bad.any(1))[0])
        left = int((~bad[r]).sum())
        raise ValueError(f"k={sc.shape[1]} exceeds the {left} items {what} {who[r]!r} may still get (its "
                         f"{'seen' if what == 'user' else 'given'} items are excluded): ask for k<={left}, "
                         f"or one {what} at a time")
    return ids, sc


def _id_array(vocab) -> np.ndarray:
    """The vocabulary's external ids as an array (object dtype for string ids)."""
    return np.asarray(vocab.ids, dtype=object if any(isinstance(i, str) for i in vocab.ids) else None)
