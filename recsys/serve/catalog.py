"""The served catalog: the model and what add_items changes (items, ids, titles, attributes),
swapped in one assignment, plus what calls derive from it once (item side, similarity sides,
counts, token bags), the per-call diversity re-ranker and explanations.

A Recommender call reads one Catalog snapshot, so it sees the old catalog or the new one,
never a mix of the two; `grown` makes the next one (new items, no retraining).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from recsys.data.content import tfidf_bags
from recsys.data.ids import conform_ids
from recsys.eval.rerank import from_config, item_bags, prefix_distribution
from recsys.models.explain import explain
from recsys.models.extend import add_items
from recsys.models.popularity import popularity_counts
from recsys.serve.request import AttributeIndex, plain_value


@dataclass(frozen=True)
class Catalog:
    scorer: Any
    items: Any                  # the item Vocab
    item_ids: np.ndarray        # index -> external id
    titles: list | None
    attributes: AttributeIndex
    tokens: Any                 # the token Vocab (never changes)
    seen: tuple                 # CSR (indptr, indices) of the known users' training items (never changes)
    cache: dict = field(default_factory=dict)      # item side, similarity sides, counts, bags: built once

    # --- derived once per catalog -----------------------------------------------------------------

    def item_side(self):
        """The model's item side (model.item_side()): the served model does not change between
        calls (add_items makes a new catalog)."""
        side = self.cache.get("item_side")
        if side is None:
            side = self.cache["item_side"] = self.scorer.item_side()
        return side

    def similarity_side(self, of: str, space):
        """The model's similarity side of `of` in `space` (models/similar.py)."""
        if space is not None and not isinstance(space, str):
            raise TypeError(f"space must be a string, got {space!r}")
        key = (of, space)
        side = self.cache.get(key)
        if side is None:
            side = self.cache[key] = self.scorer.similarity_side(of, space)
        return side

    def counts(self) -> torch.Tensor:
        """(I,) training interactions per item (the popular fallback, the popularity penalty)."""
        if "counts" not in self.cache:
            self.cache["counts"] = popularity_counts(self.seen[1], len(self.items))
        return self.cache["counts"]

    # --- per call ------------------------------------------------------------------------------------

    def reranker(self, diversity, k: int, history):
        """(re-ranker or None, pool) of a diversity dict (eval/rerank.py from_config); history:
        CSR of each ranked row's items (calibration's user genre mix)."""
        if not isinstance(diversity, dict):
            raise TypeError(f"diversity must be a dict {{method, strength, pool}}, got {diversity!r}")
        if "bags" not in self.cache:
            self.cache["bags"] = item_bags(self.scorer)
        genres = None
        if diversity.get("method") == "calibration" and self.cache["bags"] is not None:
            key = ("genres", diversity.get("prefix", "genres:"))
            if key not in self.cache:
                self.cache[key] = prefix_distribution(self.cache["bags"], self.tokens, key[1])[0]
            genres = self.cache[key] if self.cache[key].shape[1] else None
        return from_config(diversity, k=k, model=self.scorer, tokens=self.tokens, history=history,
                           bags=self.cache["bags"], counts=self.counts(), genres=genres)

    def diverse(self, req, diversity, k: int, history):
        """req with the diversity re-ranker of this call (none: req as it is)."""
        if diversity is None:
            return req
        rr, pool = self.reranker(diversity, k, history)
        return req if rr is None else replace(req, rerank=rr, pool=pool)

    def explanations(self, parts, n_rows: int, single: bool, top, user_ids, users=None, H=None) -> list:
        """Per row, per returned item: {"items": [(item id, weight)], "tokens": [(token, weight)],
        "users": [(user id, weight)]} (models/explain.py); rows ranked by popularity (unknown
        users) get empty explanations."""
        out: list = [[] for _ in range(n_rows)]
        for pos, idx, sc in parts:
            idx = idx.masked_fill(torch.isinf(sc) & (sc < 0), -1)
            e = explain(self.scorer, H, idx, top, users=users)
            for r, p in enumerate(pos):
                for j in range(idx.shape[1]):
                    if int(idx[r, j]) < 0:
                        continue
                    out[p].append({
                        "items": _pairs(self.item_ids, e.item_idx[r, j], e.item_weight[r, j]),
                        "tokens": _pairs(self.tokens.ids, e.token_idx[r, j], e.token_weight[r, j])
                        if e.token_idx is not None else [],
                        "users": _pairs(user_ids, e.user_idx[r, j], e.user_weight[r, j])
                        if e.user_idx is not None else []})
        return out[0] if single else out

    # --- new items ---------------------------------------------------------------------------------

    def grown(self, items, item_col: str, text_cols, tokenizer, token_idf, text_fields) -> tuple["Catalog", int]:
        """(the catalog with the frame's new items, how many): tokenised with the stored
        tokenizer, weighted with the stored idf (Recommender.add_items' rules)."""
        import pandas as pd          # only here: loading and ranking need no pandas
        if not isinstance(items, pd.DataFrame):
            raise TypeError(f"add_items takes a pandas DataFrame, got {type(items).__name__}")
        if item_col not in items.columns:
            raise KeyError(f"add_items: no id column {item_col!r} (columns are {list(items.columns)})")
        known = text_fields or []
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
            return self, 0
        texts = items[text_cols].fillna("").astype(str)
        docs = [tokenizer.tokenize_fields(dict(zip(text_cols, row))) for row in texts.itertuples(index=False)]
        bags = tfidf_bags(docs, self.tokens, idf=token_idf.cpu().numpy())
        grown = self.items.grown(ids)
        titles = None if self.titles is None else list(self.titles) + texts[text_cols[0]].tolist()
        attrs = {a: list(v) + (items[a].fillna("").astype(str).tolist() if a in items.columns else [""] * len(ids))
                 for a, v in self.attributes.attributes.items()}
        scorer = add_items(self.scorer, bags).to(self.scorer.device).eval()
        return Catalog(scorer, grown, id_array(grown), titles, AttributeIndex(attrs), self.tokens, self.seen), len(ids)


def id_array(vocab) -> np.ndarray:
    """The vocabulary's external ids as an array (object dtype for string ids)."""
    return np.asarray(vocab.ids, dtype=object if any(isinstance(i, str) for i in vocab.ids) else None)


def _pairs(ids, idx: torch.Tensor, w: torch.Tensor) -> list[tuple]:
    """[(external id, weight)] of the entries with idx >= 0."""
    return [(plain_value(ids[int(i)]), float(x)) for i, x in zip(idx.tolist(), w.tolist()) if i >= 0]
