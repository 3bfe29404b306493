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

    def __init__(self, ids: Sequence[Hashable], unk: str | None = None):
        self.ids: list = [_plain(i) for i in ids]
        self.unk = unk
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
        return {"ids": self.ids, "unk": self.unk}

    @classmethod
    def from_json(cls, obj: dict) -> "Vocab":
        return cls(obj["ids"], unk=obj.get("unk"))

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


def _plain(x):
    """numpy scalars -> Python scalars, so ids hash alike and serialise to JSON."""
    if isinstance(x, np.generic):
        return x.item()
    return x
