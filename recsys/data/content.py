"""Item -> content-token bags with TF-IDF weights.

For item i and token t (N items in the catalog, df(t) = number of items whose text has t):

    tf(i, t)  = number of times t occurs in i's text
    idf(t)    = ln((1 + N) / (1 + df(t))) + 1          (smoothed, never zero: sklearn's default)
    w(i, t)   = tf(i, t) * idf(t) / || tf(i, .) * idf(.) ||_2

so every item with text has a unit-norm weight vector, and the content vector the scorer pools,
sum_t w(i, t) * E[t], is a convex-ish mix of token embeddings whose size does not grow with the
length of the text. Items with no known token get an empty bag (a zero content vector).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.vocab import Vocab


@dataclass
class TokenBags:
    """CSR: item i's tokens are indices[indptr[i]:indptr[i+1]] with weights[...]."""
    indptr: np.ndarray   # (n_items + 1,) int64
    indices: np.ndarray  # (nnz,) int64 token ids
    weights: np.ndarray  # (nnz,) float32 TF-IDF weights, L2-normalised per item
    idf: np.ndarray      # (n_tokens,) float32

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1


def tfidf_bags(docs: list[list[str]], vocab: Vocab, idf: np.ndarray | None = None,
               unknown: str = "unk") -> TokenBags:
    """Bags for `docs` (one token list per item, in item-index order).

    idf: reuse a fitted idf (for items added later) instead of fitting it on `docs`.
    unknown: 'unk' maps out-of-vocabulary tokens to the vocabulary's unknown token, 'drop'
    drops them.
    """
    # every token of every doc looked up at once (one vectorised call, no loop per doc)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = [t for d in docs for t in d]
    ids = vocab.index(flat, missing="unk" if unknown == "unk" else "drop_flag") if flat else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    keep = ids >= 0
    rows, cols = rows[keep], ids[keep]
    n_items, n_tokens = len(docs), len(vocab)
    # term counts per (item, token) without a dense matrix: unique over the flat key
    key = rows * n_tokens + cols
    uniq, tf = np.unique(key, return_counts=True)
    item, token = uniq // n_tokens, uniq % n_tokens
    if idf is None:
        df = np.bincount(token, minlength=n_tokens)
        idf = (np.log((1.0 + n_items) / (1.0 + df)) + 1.0).astype(np.float32)
    w = tf.astype(np.float64) * idf[token]
    norm = np.sqrt(np.bincount(item, weights=w * w, minlength=n_items))
    w = w / norm[item]
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(item, minlength=n_items), out=indptr[1:])
    return TokenBags(indptr, token.astype(np.int64), w.astype(np.float32), np.asarray(idf, np.float32))
