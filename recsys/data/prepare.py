"""From files to index arrays: interactions, the item catalog, vocabularies, splits, token bags.

Two entry points, both returning `Prepared`:
- `prepare_movielens(path)`: the embedded MovieLens layout (ratings/movies/tags.csv);
- `prepare_files(...)`: a user's own CSV/Parquet files, one interactions file to split, or
  pre-split train/test[/valid] files, plus an optional item table with text columns.

Protocol decisions made here (README "Protocol"):
- implicit feedback: every interaction is a positive, or only rating >= `min_rating`;
- duplicate (user, item) rows: the last one (by timestamp, else file order) is kept, counted;
- the catalog is every item of the item table plus every item of the training interactions; an
  item with no training interaction is "cold": it has a row, its content tokens, and a neutral
  collaborative score (see scorer.py);
- valid/test rows whose user has no training interaction, or whose item is not in the catalog,
  are dropped and counted; so are valid/test pairs also present in train (a seen item is masked
  at ranking time and could never be hit);
- user tags on an item enter that item's text, except tags a user put on one of his own valid or
  test items (they would leak the answer).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys.data.content import TokenBags, tfidf_bags
from recsys.data.io import DataError, read_table, require_columns
from recsys.data.splits import NEW_GIVEN, NEW_TARGET, SPLITS, TEST, TRAIN, VALID
from recsys.data.tokenize import WordTokenizer, make_tokenizer
from recsys.data.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    users: Vocab
    items: Vocab
    tokens: Vocab
    tokenizer: WordTokenizer
    train: np.ndarray          # (N_train, 2) int64: user index, item index
    valid: np.ndarray          # (N_valid, 2)
    test: np.ndarray           # (N_test, 2)
    bags: TokenBags            # item -> TF-IDF weighted tokens
    item_titles: list[str]     # a readable label per item (first text field)
    report: dict = field(default_factory=dict)
    train_ratings: np.ndarray | None = None   # (N_train,) float32 rating of each train pair, if given
    # new-user protocol (data.split.kind=newusers): users never seen in training, their given
    # history (handed to the model at inference) and their held-out targets, (N, 2) int64 pairs
    # of (new-user index, item index)
    new_users: Vocab | None = None
    new_given: np.ndarray | None = None
    new_target: np.ndarray | None = None
    text_fields: list[str] = field(default_factory=list)   # the item text fields, in token order

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def item_warm(self) -> np.ndarray:
        """(n_items,) bool: the item has at least one training interaction."""
        warm = np.zeros(self.n_items, dtype=bool)
        warm[self.train[:, 1]] = True
        return warm

    def split_frame(self, part: str) -> pd.DataFrame:
        """A split part with external ids (columns user, item), for storing and re-evaluating."""
        pairs = getattr(self, part)
        return pd.DataFrame({"user": [self.users.ids[u] for u in pairs[:, 0]],
                             "item": [self.items.ids[i] for i in pairs[:, 1]]})


# ---------------------------------------------------------------------------------------------
# reading and cleaning


def _clean_ids(s: pd.Series, where: str) -> pd.Series:
    if s.isna().any():
        row = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise DataError(f"{where}: missing id in data row {row + 1}")
    if pd.api.types.is_float_dtype(s):
        if not np.all(np.mod(s.to_numpy(), 1) == 0):
            raise DataError(f"{where}: ids must be integers or strings, found fractional values")
        return s.astype(np.int64)
    if pd.api.types.is_integer_dtype(s):
        return s.astype(np.int64)
    kinds = {type(v) for v in s.to_numpy()}
    if len(kinds) > 1:
        raise DataError(f"{where}: ids of mixed types {sorted(k.__name__ for k in kinds)}; "
                        f"use one type per column")
    return s.astype(str)


def _numeric(s: pd.Series, where: str, allow_datetime: bool = False) -> pd.Series:
    out = pd.to_numeric(s, errors="coerce")
    if allow_datetime and out.isna().any() and not s.isna().any():
        dt = pd.to_datetime(s, errors="coerce", utc=True)
        if not dt.isna().any():
            secs = (dt - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
            return pd.Series(secs.to_numpy(dtype=np.float64), index=s.index)
    bad = out.isna().to_numpy() | ~np.isfinite(out.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: non-numeric, NaN or infinite value {s.iloc[row]!r} in data row {row + 1}")
    return out.astype(np.float64)


def read_interactions(path: str, user_col: str = "user", item_col: str = "item",
                      rating_col: str | None = "rating", time_col: str | None = "timestamp",
                      encoding: str = "utf-8") -> pd.DataFrame:
    """A table with columns user, item[, rating][, timestamp]. rating_col/time_col are used
    when present in the file; name them None to ignore them."""
    df = read_table(path, "interactions", encoding)
    require_columns(df, {"user": user_col, "item": item_col}, path)
    out = pd.DataFrame({"user": _clean_ids(df[user_col], f"{path}, column {user_col!r}"),
                        "item": _clean_ids(df[item_col], f"{path}, column {item_col!r}")})
    if rating_col is not None and rating_col in df:
        out["rating"] = _numeric(df[rating_col], f"{path}, column {rating_col!r}")
    if time_col is not None and time_col in df:
        out["timestamp"] = _numeric(df[time_col], f"{path}, column {time_col!r}", allow_datetime=True)
    return out


def read_items(path: str, item_col: str = "item", text_cols: list[str] | None = None,
               encoding: str = "utf-8") -> pd.DataFrame:
    """Item table: column `item` plus text columns (all other columns when text_cols is None)."""
    df = read_table(path, "items", encoding)
    require_columns(df, {"item": item_col}, path)
    if text_cols is None:
        text_cols = [c for c in df.columns if c != item_col]
    for c in text_cols:
        if c not in df.columns:
            raise DataError(f"{path}: no text column {c!r} (columns are {list(df.columns)})")
    if not text_cols:
        raise DataError(f"{path}: the items file has no text column besides {item_col!r}")
    out = pd.DataFrame({"item": _clean_ids(df[item_col], f"{path}, column {item_col!r}")})
    for c in text_cols:
        out[c] = df[c].fillna("").astype(str)
    dup = out["item"].duplicated(keep="last")
    if dup.any():
        log.warning("%s: %d duplicate item rows, kept the last of each", path, int(dup.sum()))
        out = out[~dup]
    return out.reset_index(drop=True)


def _dedupe(df: pd.DataFrame, what: str, report: dict) -> pd.DataFrame:
    """Keep the last row of each (user, item): by timestamp when there is one, else file order."""
    if "timestamp" in df:
        df = df.sort_values("timestamp", kind="stable")
    dup = df.duplicated(["user", "item"], keep="last")
    if dup.any():
        report[f"{what}_duplicates_dropped"] = int(dup.sum())
        log.warning("%s: %d duplicate (user, item) rows, kept the last of each", what, int(dup.sum()))
        df = df[~dup]
    return df.sort_index()


def _implicit(df: pd.DataFrame, min_rating: float | None, what: str) -> pd.DataFrame:
    if min_rating is None:
        return df
    if "rating" not in df:
        raise DataError(f"{what}: data.min_rating={min_rating} needs a rating column")
    return df[df["rating"] >= min_rating]


# ---------------------------------------------------------------------------------------------
# building


def _build(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
           items: pd.DataFrame | None, text_cols: list[str], tags: pd.DataFrame | None,
           tokenizer: WordTokenizer, min_count: int, max_tokens: int | None,
           report: dict, untagged: set | None = None, new_parts: dict | None = None) -> Prepared:
    # users: everybody with a training interaction, sorted for a deterministic order
    users = Vocab(sorted(pd.unique(train["user"])))
    # catalog: the item table plus every training item
    known = [] if items is None else list(items["item"])
    extra = sorted(set(pd.unique(train["item"])) - set(known))
    item_vocab = Vocab(sorted(known) + extra if items is not None else extra)
    if items is not None and extra:
        report["train_items_without_text"] = len(extra)
        log.warning("%d training items are not in the items file; they get no content tokens", len(extra))

    def to_pairs(df: pd.DataFrame, what: str) -> np.ndarray:
        u = users.index(df["user"], missing="drop_flag")
        i = item_vocab.index(df["item"], missing="drop_flag")
        ok = (u >= 0) & (i >= 0)
        if what != "train":
            if (u < 0).any():
                report[f"{what}_rows_unknown_user"] = int((u < 0).sum())
            if ((u >= 0) & (i < 0)).any():
                report[f"{what}_rows_unknown_item"] = int(((u >= 0) & (i < 0)).sum())
            if (~ok).any():
                log.warning("%s: dropped %d rows whose user has no training interaction or whose "
                            "item is not in the catalog", what, int((~ok).sum()))
        return np.stack([u[ok], i[ok]], axis=1).astype(np.int64)

    tr = to_pairs(train, "train")
    ratings = None
    if "rating" in train:   # train rows all map (users and catalog are built from train)
        ratings = train["rating"].to_numpy(dtype=np.float32)
    n_items = len(item_vocab)
    masked = tr[:, 0] * n_items + tr[:, 1]        # (user, item) keys seen before the part being ranked
    parts = {}
    for what, df in (("valid", valid), ("test", test)):
        p = to_pairs(df, what)
        inter = _member(p[:, 0] * n_items + p[:, 1], masked)
        if inter.any():
            report[f"{what}_rows_already_seen"] = int(inter.sum())
            log.warning("%s: dropped %d (user, item) pairs already in train%s", what, int(inter.sum()),
                        "" if what == "valid" else " or valid")
        parts[what] = p[~inter]
        # test ranks with train + valid masked, so a test pair that is also in valid is dropped too
        masked = np.concatenate([masked, parts[what][:, 0] * n_items + parts[what][:, 1]])

    # item text: fields of the item table, plus tags not taken from held-out pairs
    fields: list[dict[str, str]] = [dict() for _ in range(len(item_vocab))]
    titles = [str(i) for i in item_vocab.ids]
    if items is not None:
        idx = item_vocab.index(items["item"])
        for c in text_cols:
            for n, t in zip(idx, items[c].tolist()):
                fields[n][c] = t
        if text_cols:
            for n, t in zip(idx, items[text_cols[0]].tolist()):
                titles[n] = t
    if tags is not None and len(tags):
        held = pd.concat([valid[["user", "item"]], test[["user", "item"]]])
        key = pd.MultiIndex.from_frame(tags[["user", "item"]])
        leak = key.isin(pd.MultiIndex.from_frame(held))
        if new_parts:   # new users are not in the system at training time: none of their tags
            leak |= tags["user"].isin(set(new_parts["given"]["user"]) | set(new_parts["target"]["user"])).to_numpy()
        report["tags_dropped_as_leaks"] = int(leak.sum())
        t = tags[~leak]
        if untagged:   # held-out cold items: a new item has no user tags yet
            cold = t["item"].isin(untagged)
            report["tags_dropped_cold_items"] = int(cold.sum())
            t = t[~cold]
        t = t[t["item"].isin(set(item_vocab.ids))]
        joined = t.groupby("item")["tag"].apply(lambda x: " ".join(map(str, x)))
        for n, txt in zip(item_vocab.index(joined.index), joined.tolist()):
            fields[n]["tags"] = txt
    tokenizer.fit(fields)               # bpe learns its subwords from this very text
    docs = [tokenizer.tokenize_fields(f) for f in fields]
    empty = sum(1 for d in docs if not d)
    if empty:
        report["items_without_text"] = empty
        log.warning("%d catalog items have no text; their content vector is zero", empty)
    if tokenizer.kind == "pretrained":  # the model's whole vocabulary: later items meet no unknown token
        tokens = Vocab(tokenizer.vocabulary(), unk="[UNK]")
    else:
        tokens = Vocab.build_tokens(docs, min_count=min_count, max_size=max_tokens)
    bags = tfidf_bags(docs, tokens)
    prep = Prepared(users, item_vocab, tokens, tokenizer, tr, parts["valid"], parts["test"],
                    bags, titles, report, ratings,
                    text_fields=list(text_cols) + (["tags"] if tags is not None and len(tags) else []))
    if new_parts:
        _add_new_users(prep, new_parts, report)
    report.update(n_users=prep.n_users, n_items=prep.n_items, n_tokens=len(tokens),
                  n_train=len(tr), n_valid=len(parts["valid"]), n_test=len(parts["test"]),
                  n_cold_items=int((~prep.item_warm()).sum()))
    log.info("data: %s", report)
    return prep


def _member(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(N,) bool: keys[i] is in pool (int64 arrays), by one sort and a binary search (np.isin's
    hashing is several times slower on tens of millions of keys)."""
    if len(pool) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    srt = torch.sort(torch.from_numpy(np.ascontiguousarray(pool))).values.numpy()
    pos = np.minimum(np.searchsorted(srt, keys), len(srt) - 1)
    return srt[pos] == keys


def _add_new_users(prep: Prepared, new_parts: dict, report: dict) -> None:
    """The new-user protocol's users: their own vocabulary (never the training one), given
    history and targets as index pairs; items outside the catalog are dropped and counted."""
    g, t = new_parts["given"], new_parts["target"]
    vocab = Vocab(sorted(set(g["user"]) | set(t["user"])))
    out = {}
    for what, df in (("given", g), ("target", t)):
        i = prep.items.index(df["item"], missing="drop_flag")
        if (i < 0).any():
            report[f"new_{what}_rows_unknown_item"] = int((i < 0).sum())
        u = vocab.index(df["user"])
        out[what] = np.stack([u[i >= 0], i[i >= 0]], axis=1).astype(np.int64)
    prep.new_users, prep.new_given, prep.new_target = vocab, out["given"], out["target"]
    report.update(n_new_users=len(vocab), n_new_given=len(out["given"]), n_new_target=len(out["target"]))


def _split(df: pd.DataFrame, split: dict, new_parts: dict | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, valid, test) frames; the new-user protocol's given/target frames go into
    new_parts (when given) as "given" and "target"."""
    split = dict(split)
    kind = split.pop("kind", "random")
    if kind not in SPLITS:
        raise DataError(f"data.split.kind={kind!r} is not one of {sorted(SPLITS)}")
    try:
        label = SPLITS[kind](df.reset_index(drop=True), **split)
    except TypeError as e:
        raise DataError(f"data.split: {e}") from None
    df = df.reset_index(drop=True)
    if new_parts is not None and (label >= NEW_GIVEN).any():
        new_parts["given"], new_parts["target"] = df[label == NEW_GIVEN], df[label == NEW_TARGET]
    return df[label == TRAIN], df[label == VALID], df[label == TEST]


def _carve_valid(train: pd.DataFrame, valid_ratio: float, seed: int):
    """Validation carved from a given train file: per user, a random `valid_ratio`."""
    if valid_ratio <= 0:
        return train, train.iloc[:0]
    tr, va, _ = _split(train, {"kind": "random", "valid": valid_ratio, "test": 0.0, "seed": seed})
    return tr, va


def _tokenizer(tokens: dict) -> tuple[WordTokenizer, int, int | None]:
    tokens = dict(tokens or {})
    min_count = int(tokens.pop("min_count", 1))
    max_size = tokens.pop("max_size", None)
    try:
        return make_tokenizer(**tokens), min_count, max_size
    except TypeError as e:
        raise DataError(f"data.tokens: {e}") from None


def prepare_movielens(path: str, min_rating: float | None = None, use_tags: bool = True,
                      split: dict | None = None, tokens: dict | None = None) -> Prepared:
    """MovieLens (ml-latest-small layout). Item text = title, genres, user tags."""
    import os
    report: dict = {}
    ratings = read_interactions(os.path.join(path, "ratings.csv"), "userId", "movieId", "rating", "timestamp")
    movies = read_table(os.path.join(path, "movies.csv"), "items")
    require_columns(movies, {"item": "movieId", "title": "title", "genres": "genres"}, path)
    items = pd.DataFrame({"item": _clean_ids(movies["movieId"], "movies.csv, column 'movieId'"),
                          "title": movies["title"].fillna("").astype(str),
                          "genres": movies["genres"].fillna("").astype(str)
                          .str.replace("(no genres listed)", "", regex=False).str.replace("|", " ")})
    tags = None
    if use_tags:
        t = read_table(os.path.join(path, "tags.csv"), "tags")
        tags = pd.DataFrame({"user": _clean_ids(t["userId"], "tags.csv"),
                             "item": _clean_ids(t["movieId"], "tags.csv"),
                             "tag": t["tag"].fillna("").astype(str)})
    df = _dedupe(_implicit(ratings, min_rating, "ratings.csv"), "ratings.csv", report)
    split = split or {"kind": "random", "valid": 0.1, "test": 0.1, "seed": 2026}
    new_parts: dict = {}
    tr, va, te = _split(df, split, new_parts)
    tok, mc, ms = _tokenizer(tokens or {"prefix_fields": ["genres"], "min_count": 2})
    # cold-item protocol: the held-out items lose all user tags, not only the held-out pairs'
    untagged = set(te["item"]) - set(tr["item"]) - set(va["item"]) if split.get("kind") == "colditems" else None
    return _build(tr, va, te, items, ["title", "genres"], tags, tok, mc, ms, report, untagged, new_parts)


def prepare_files(interactions: str | None = None, train: str | None = None,
                  test: str | None = None, valid: str | None = None, items: str | None = None,
                  user_col: str = "user", item_col: str = "item",
                  rating_col: str | None = "rating", time_col: str | None = "timestamp",
                  items_item_col: str | None = None, text_cols: list[str] | None = None,
                  min_rating: float | None = None, encoding: str = "utf-8",
                  split: dict | None = None, valid_ratio: float = 0.1, seed: int = 2026,
                  tokens: dict | None = None) -> Prepared:
    """A user's own files. Either `interactions` (split by `split`) or `train` + `test`
    (+ optional `valid`; otherwise a per-user `valid_ratio` of train is carved out)."""
    report: dict = {}
    cols = dict(user_col=user_col, item_col=item_col, rating_col=rating_col, time_col=time_col,
                encoding=encoding)

    def load(p, what):
        return _dedupe(_implicit(read_interactions(p, **cols), min_rating, p), what, report)

    if interactions is not None:
        if train is not None or test is not None:
            raise DataError("give either data.interactions or data.train/data.test, not both")
        new_parts: dict = {}
        tr, va, te = _split(load(interactions, "interactions"), split or {"kind": "random"}, new_parts)
    elif train is not None and test is not None:
        tr, te = load(train, "train"), load(test, "test")
        if valid is not None:
            va = load(valid, "valid")
        else:
            tr, va = _carve_valid(tr, valid_ratio, seed)
    else:
        raise DataError("no interactions: set data.interactions=FILE, or data.train=FILE and data.test=FILE")
    item_df = None
    if items is not None:
        item_df = read_items(items, items_item_col or item_col, text_cols, encoding)
        text_cols = [c for c in item_df.columns if c != "item"]
    tok, mc, ms = _tokenizer(tokens)
    return _build(tr, va, te, item_df, text_cols or [], None, tok, mc, ms, report,
                  new_parts=new_parts if interactions is not None else None)
