"""Vocabularies: external ids (users, items, tokens) <-> contiguous integer indices.

Everything inside recsys works on indices; the `Recommender` facade maps back at the edge.
A vocabulary is saved as a JSON list (index = position), so ids keep their type (int or str).
"""
from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd


class Vocab:
    """Ordered id -> index map.

    >>> v = Vocab(["b", "a"])
    >>> v.index(["a", "b"]).tolist(), v.ids[0]
    ([1, 0], 'b')
    """

    def __init__(self, ids: Sequence[Hashable], unk: str | None = None, id_type: str | None = None):
        self.ids: list = [_plain(i) for i in ids]
        self.unk = unk
        self.id_type = _id_type(self.ids, id_type)
        self._index = {i: n for n, i in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")
        if unk is not None and unk not in self._index:
            raise ValueError(f"unknown token {unk!r} missing from the vocabulary")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key) -> bool:
        return _plain(key) in self._index

    def get(self, key, default: int = -1) -> int:
        return self._index.get(_plain(key), default)

    def index(self, keys: Iterable, missing: str = "raise") -> np.ndarray:
        """Indices of `keys`, (N,) int64. missing: 'raise', 'unk' (map to the unknown token) or
        'drop_flag' (map to -1, the caller filters)."""
        default = -1
        if missing == "unk":
            if self.unk is None:
                raise ValueError("this vocabulary has no unknown token")
            default = self._index[self.unk]
        if not isinstance(keys, (np.ndarray, pd.Series, pd.Index)):
            keys = list(keys)
        if len(keys) <= 64 and isinstance(keys, list):
            # a request's few ids: the dict (pandas' indexer costs ~0.3 ms a call); a bool is
            # no id (True == 1 in a dict, not in pandas)
            out = np.fromiter((-1 if isinstance(k, (bool, np.bool_)) else self._index.get(_plain(k), -1)
                               for k in keys), dtype=np.int64, count=len(keys))
        else:   # one vectorised hash lookup (pandas), no Python loop over the keys
            out = np.asarray(self._lookup().get_indexer(keys), dtype=np.int64)
        if default != -1:
            out[out < 0] = default
        if missing == "raise" and (out < 0).any():
            bad = [k for k, o in zip(keys, out) if o < 0][:3]
            raise KeyError(f"ids not in the vocabulary: {bad}")
        return out

    def _lookup(self) -> pd.Index:
        if getattr(self, "_pd", None) is None:
            self._pd = pd.Index(self.ids, dtype=object if any(isinstance(i, str) for i in self.ids[:1]) else None)
        return self._pd

    def to_json(self) -> dict:
        return {"ids": self.ids, "unk": self.unk, "id_type": self.id_type}

    @classmethod
    def from_json(cls, obj: dict) -> "Vocab":
        return cls(obj["ids"], unk=obj.get("unk"), id_type=obj.get("id_type"))

    def grown(self, more: Sequence[Hashable]) -> "Vocab":
        """This vocabulary with `more` ids appended, of the same id type."""
        return Vocab(self.ids + list(more), unk=self.unk, id_type=self.id_type)

    @classmethod
    def build_tokens(cls, docs: Iterable[Iterable[str]], min_count: int = 1,
                     max_size: int | None = None, unk: str = "[UNK]") -> "Vocab":
        """Token vocabulary: `unk` at index 0, then tokens with count >= min_count, most frequent
        first (ties broken alphabetically so the order is deterministic), at most max_size in all."""
        counts = Counter(t for doc in docs for t in doc)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t != unk),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size < 1:
                raise ValueError(f"max_size must be >= 1, got {max_size}")
            kept = kept[: max_size - 1]
        return cls([unk] + kept, unk=unk)


ID_TYPES = ("int", "str")


def _id_type(ids: list, given: str | None) -> str | None:
    """The one id type of a catalog, decided when it is made and kept for its life (exports,
    event logs, retraining): 'int' when every id is an integer, 'str' when every id is a string,
    None for a vocabulary holding both (an export made before the id rule). An empty
    vocabulary keeps the type it is given; a given type must agree with the ids."""
    if given is not None and given not in ID_TYPES:
        raise ValueError(f"id_type must be one of {ID_TYPES} or None, got {given!r}")
    if not ids:
        return given
    ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    found = "int" if ints else "str" if all(isinstance(i, str) for i in ids) else None
    if given is not None and found != given:
        raise ValueError(f"id_type {given!r} does not match the ids (found {found or 'both kinds'})")
    return found


def _plain(x):
    """numpy scalars -> Python scalars, so ids hash alike and serialise to JSON."""
    if isinstance(x, np.generic):
        return x.item()
    return x
