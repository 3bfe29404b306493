"""`Recommender`: external ids in, external ids out, over a loaded export.

    from recsys import Recommender
    rec = Recommender.from_pretrained("outputs/run/export", device="cpu")
    ids, scores = rec.recommend(["u1", "u2"], k=10)     # (2, 10) each
    ids, scores = rec.recommend("u1", k=10)             # (10,) each

Needs only torch, numpy and safetensors: no Lightning, no Hydra.
"""
from __future__ import annotations

import numpy as np
import torch

from recsys.sparse.csr import csr
from recsys.eval.evaluation import evaluate
from recsys.models.popularity import popularity_counts
from recsys.serve.export import load_export, save_export
from recsys.eval.ranking import topk


class Recommender:
    def __init__(self, scorer, users, items, tokens, tokenizer, seen, token_idf, titles=None, meta=None):
        self.scorer = scorer
        self.users, self.items, self.tokens, self.tokenizer = users, items, tokens, tokenizer
        self.seen = seen
        self.token_idf = token_idf
        self.titles = titles
        self.meta = meta or {}
        self._item_ids = _id_array(items)

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
        self.scorer = add_items(self.scorer, bags).to(self.device).eval()
        self.items = Vocab(self.items.ids + ids, unk=self.items.unk)
        self._item_ids = _id_array(self.items)
        if self.titles is not None:
            self.titles = list(self.titles) + texts[text_cols[0]].tolist()
        return len(ids)

    def user_index(self, users) -> torch.Tensor:
        try:
            idx = self.users.index(users)
        except KeyError as e:
            raise KeyError(f"unknown user id(s) {e.args[0].split(': ', 1)[-1]}: not in the training data") from None
        return torch.as_tensor(idx, device=self.device)

    def _check_k(self, k) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {k!r}")
        if not 0 < k <= len(self.items):
            raise ValueError(f"k={k} must be between 1 and the catalog size {len(self.items)}")

    @torch.no_grad()
    def scores(self, users) -> torch.Tensor:
        """(B, n_items) scores of users (one id or a list) against the whole catalog (nothing masked)."""
        batch = [users] if np.isscalar(users) or isinstance(users, (str, bytes)) else list(users)
        return self.scorer(self.user_index(batch))

    @torch.no_grad()
    def recommend(self, users, k: int = 10, exclude_seen: bool = True, chunk_size: int = 1024,
                  unknown: str = "error"):
        """Top-k items for one user id (-> (k,) ids, (k,) scores) or a list of ids (-> (B, k)).
        exclude_seen drops the items each user interacted with in training. A user id not in
        the model: unknown="error" raises KeyError naming it; unknown="popular" gives that user
        the k items with the most training interactions (score = their count)."""
        single = np.isscalar(users) or isinstance(users, (str, bytes))
        batch = [users] if single else list(users)
        self._check_k(k)
        if unknown not in ("error", "popular"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'popular'")
        if unknown == "error":
            u = self.user_index(batch)
        else:
            u = torch.as_tensor(self.users.index(batch, missing="drop_flag"), device=self.device)
        known = (u >= 0).cpu().numpy()
        ids = np.empty((len(batch), int(k)), dtype=self._item_ids.dtype)
        sc = np.zeros((len(batch), int(k)), dtype=np.float32)
        if known.any():
            idx, s = topk(self.scorer, u[torch.from_numpy(known).to(u.device)], int(k),
                          self.seen if exclude_seen else None, chunk_size)
            ids[known], sc[known] = self._item_ids[idx.cpu().numpy()], s.cpu().numpy()
        if not known.all():
            v, i = torch.topk(popularity_counts(self.seen[1], len(self.items)), int(k))
            ids[~known], sc[~known] = self._item_ids[i.cpu().numpy()], v.cpu().numpy()
        return (ids[0], sc[0]) if single else (ids, sc)

    @torch.no_grad()
    def recommend_for_history(self, items, k: int = 10, exclude_given: bool = True, unknown: str = "error"):
        """Top-k items for a user who is not in the model, from the items they interacted with
        (external ids), without retraining: one history (a list of ids) -> ((k,) ids, (k,)
        scores); a list of histories -> ((B, k), (B, k)). The history's items are excluded
        unless exclude_given=False. unknown="error" refuses item ids outside the catalog,
        "ignore" drops them. UserKNN finds the history's neighbours among the known users."""
        single = len(items) == 0 or np.isscalar(items[0]) or isinstance(items[0], (str, bytes))
        hists = [list(items)] if single else [list(h) for h in items]
        self._check_k(k)
        if unknown not in ("error", "ignore"):
            raise ValueError(f"unknown={unknown!r} must be 'error' or 'ignore'")
        rows = []
        for h in hists:
            idx = self.items.index(h, missing="drop_flag") if h else np.zeros(0, np.int64)
            if unknown == "error" and (idx < 0).any():
                bad = [x for x, j in zip(h, idx) if j < 0][:5]
                raise KeyError(f"unknown item id(s) {bad} in the history (pass unknown='ignore' to drop them)")
            rows.append(np.unique(idx[idx >= 0]))
        pairs = np.array([(r, j) for r, h in enumerate(rows) for j in h], dtype=np.int64).reshape(-1, 2)
        given = tuple(t.to(self.device) for t in csr(pairs, len(rows)))
        idx, sc = topk(self.scorer, torch.arange(len(rows), device=self.device), int(k),
                       given if exclude_given else None, histories=given)
        ids = self._item_ids[idx.cpu().numpy()]
        sc = sc.cpu().numpy()
        return (ids[0], sc[0]) if single else (ids, sc)

    def evaluate(self, users, items, ks=(10, 20), chunk_size: int = 1024, prefix: str = "test/"):
        """Full-ranking metrics of held-out (user, item) pairs given as external ids, with each
        user's seen items masked. Pairs whose user or item the model does not know, and pairs
        that are also seen items, are dropped and counted in the returned report.
        Returns (metrics {"test/ndcg@10": ...}, report {"pairs_used": ..., ...})."""
        u = self.users.index(users, missing="drop_flag")
        i = self.items.index(items, missing="drop_flag")
        report = {"pairs_given": int(len(u)), "dropped_unknown_user": int((u < 0).sum()),
                  "dropped_unknown_item": int(((u >= 0) & (i < 0)).sum())}
        ok = (u >= 0) & (i >= 0)
        pairs = np.unique(np.stack([u[ok], i[ok]], 1), axis=0) if ok.any() else np.zeros((0, 2), np.int64)
        sp, si = (t.cpu().numpy() for t in self.seen)
        seen = np.repeat(np.arange(len(sp) - 1), np.diff(sp)) * len(self.items) + si
        also = np.isin(pairs[:, 0] * len(self.items) + pairs[:, 1], seen)
        report["dropped_seen"] = int(also.sum())
        pairs = pairs[~also]
        report["pairs_used"] = int(len(pairs))
        report["users"] = int(len(np.unique(pairs[:, 0])))
        target = tuple(t.to(self.device) for t in csr(pairs, len(self.users)))
        metrics, _ = evaluate(self.scorer, target, self.seen, ks, chunk_size, prefix)
        return metrics, report


def _id_array(vocab) -> np.ndarray:
    """The vocabulary's external ids as an array (object dtype for string ids)."""
    return np.asarray(vocab.ids, dtype=object if any(isinstance(i, str) for i in vocab.ids) else None)
