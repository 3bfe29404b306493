"""From files to index arrays: interactions, the item catalog, vocabularies, splits, token bags.

Two entry points, both returning `Prepared`:
- `prepare_movielens(path)`: the embedded MovieLens layout (ratings/movies/tags.csv);
- `prepare_files(...)`: a user's own CSV/Parquet files, one interactions file to split, or
  pre-split train/test[/valid] files, plus an optional item table with text columns.

Protocol decisions made here (docs/results.md, "Default protocol"):
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

import inspect
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.data.content import TokenBags, tfidf_bags
from recsys.data.eventlog import LogError, read_records
from recsys.data.ids import _plain_int, clean_id_column, clean_ids, id_texts
from recsys.data.io import DataError, read_table, require_columns
from recsys.data.splits import NEW_GIVEN, NEW_TARGET, SPLITS, TEST, TRAIN, VALID
from recsys.data.tokenize import WordTokenizer, make_tokenizer
from recsys.data.vocab import Vocab
from recsys.sparse.csr import member, sequence_csr

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
    valid_ratings: np.ndarray | None = None   # (N_valid,) float32 rating of each valid pair, if given
    # validation was carved out of a given train file (data.valid_ratio): the final model is
    # refit on train + valid by default (data.refit=auto, train/search.py refit_data)
    valid_carved: bool = False
    # {field: one string per item}: the item table's text fields, kept in the export for the
    # Recommender's where= filters (serve/request.py)
    item_attributes: dict[str, list[str]] = field(default_factory=dict)
    # lines of the service's event log (data.events, recsys/serve/events.py) whose events are
    # in train: the export records it (meta["events_through"]) and the service, on reload,
    # re-applies only the lines after it
    events_through: int = 0
    # (N_part,) float64 time of each train / valid pair: the timestamp column when the data has
    # one, else the row's position in its file (order of the events as read)
    train_times: np.ndarray | None = None
    valid_times: np.ndarray | None = None

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

    def sequences(self, parts: tuple[str, ...] = ("train",)):
        """Each user's items of the given parts in time order, as CSR (indptr (U+1,), indices
        (N,)) int64 tensors: ordered by time, equal times in the order the rows were read
        (for MovieLens's ratings.csv: by item id), train before valid at equal times."""
        pairs = np.concatenate([getattr(self, p) for p in parts])
        times = np.concatenate([_times_of(self, p) for p in parts])
        return sequence_csr(pairs, times, self.n_users)

    def split_frame(self, part: str) -> pd.DataFrame:
        """A split part with external ids (columns user, item), for storing and re-evaluating."""
        pairs = getattr(self, part)
        return pd.DataFrame({"user": [self.users.ids[u] for u in pairs[:, 0]],
                             "item": [self.items.ids[i] for i in pairs[:, 1]]})


def _times_of(prep: Prepared, part: str) -> np.ndarray:
    t = getattr(prep, f"{part}_times", None)
    n = len(getattr(prep, part))
    return np.arange(n, dtype=np.float64) if t is None or len(t) != n else t


def _row_times(df: pd.DataFrame) -> np.ndarray:
    """(N,) float64: the timestamp of each row, else its position (file order)."""
    if "timestamp" in df:
        return df["timestamp"].to_numpy(dtype=np.float64)
    return np.arange(len(df), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# reading and cleaning


_clean_ids = clean_id_column      # one column alone under the id rule (recsys/data/ids.py)


def _apply_id_rule(frames: list[tuple[pd.DataFrame, dict[str, str]]]) -> None:
    """In place: the user and item columns of frames that share one id space, each role under
    one id rule over all its frames. frames: (frame, {role: "FILE, column 'COL'"})."""
    for role in ("user", "item"):
        has = [(df, w[role]) for df, w in frames if role in w]
        for (df, _), ids in zip(has, clean_ids([df[role] for df, _ in has], [w for _, w in has])):
            df[role] = ids


def _numeric(s: pd.Series, where: str, allow_datetime: bool = False) -> pd.Series:
    try:
        out = pd.to_numeric(s, errors="coerce")
    except (TypeError, ValueError):       # cells pandas cannot even try (lists, dicts, bytes)
        bad = next((v for v in s if not isinstance(v, (int, float, str, np.number))), s.iloc[0])
        raise DataError(f"{where}: non-numeric value of type {type(bad).__name__}") from None
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
                      encoding: str = "utf-8", raw_ids: bool = False, what: str = "interactions",
                      arg: str | None = None) -> pd.DataFrame:
    """A table with columns user, item[, rating][, timestamp]. rating_col/time_col are used
    when present in the file; name them None to ignore them. Ids follow the id rule
    (recsys/data/ids.py) over this file alone; raw_ids=True leaves them as read (CSV: text as
    written) for the caller to apply the rule over several files, or an existing vocabulary."""
    df = read_table(path, what, encoding, id_cols=(user_col, item_col), arg=arg)
    return interactions_from_frame(df, path, user_col, item_col, rating_col, time_col, raw_ids)


def interactions_from_frame(df: pd.DataFrame, path: str, user_col: str = "user", item_col: str = "item",
                            rating_col: str | None = "rating", time_col: str | None = "timestamp",
                            raw_ids: bool = False) -> pd.DataFrame:
    """read_interactions of a frame in memory; `path` names it in messages."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{path}: expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataError(f"{path} has no rows")
    require_columns(df, {"user": user_col, "item": item_col}, path)
    out = pd.DataFrame({"user": df[user_col].to_numpy(), "item": df[item_col].to_numpy()})
    if not raw_ids:
        _apply_id_rule([(out, _where(path, user_col, item_col))])
    if rating_col is not None and rating_col in df:
        out["rating"] = _numeric(df[rating_col], f"{path}, column {rating_col!r}").to_numpy()
    if time_col is not None and time_col in df:
        out["timestamp"] = _numeric(df[time_col], f"{path}, column {time_col!r}", allow_datetime=True).to_numpy()
    return out


def read_events(path: str, ratings: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """The service's event log (JSONL, recsys/data/eventlog.py) as raw training interactions:
    (frame with user, item, timestamp [, rating], number of log lines read). Ids are their text,
    for the id rule to read with the other files; an event counts as a positive: its rating is
    the highest rating of `ratings` when that has a rating column."""
    if not os.path.exists(path):
        raise DataError(f"data.events={path}: no such file")
    try:
        records = read_records(path)
    except LogError as e:
        raise DataError(f"data.events: {e}") from None
    lines = [n + 1 for n, r in enumerate(records) if r["op"] == "event"]
    ev = [r for r in records if r["op"] == "event"]
    out = pd.DataFrame({"user": [str(r["user"]) for r in ev], "item": [str(r["item"]) for r in ev],
                        "timestamp": np.asarray([r.get("ts") or 0.0 for r in ev], dtype=np.float64)})
    if ratings is not None and len(ratings) and len(out):
        # one id type per catalog: integer training ids stay integers (an event of user
        # "newbie" turned every id into a string, and user 5 into "5", a second user)
        for role in ("user", "item"):
            if role in ratings and _plain_int(id_texts(ratings[role], f"{role} ids")).all():
                bad = np.flatnonzero(~_plain_int(out[role]))
                if len(bad):
                    raise DataError(f"data.events={path}, line {lines[bad[0]]}: {role} {out[role].iloc[bad[0]]!r} is "
                                    f"not an integer id, but the training data's {role} ids are integers "
                                    f"(one id type per catalog)")
    if ratings is not None and "rating" in ratings and len(ratings):
        out["rating"] = float(ratings["rating"].max())
    return out, len(records)


def _with_events(tr: pd.DataFrame, ev: pd.DataFrame | None, report: dict) -> pd.DataFrame:
    """Training interactions plus the event log's (a repeated (user, item): the latest kept)."""
    if ev is None:
        return tr
    report["events_used"] = int(len(ev))
    if "timestamp" not in tr:
        ev = ev.drop(columns="timestamp")
    return _dedupe(pd.concat([tr, ev[[c for c in ev.columns if c in tr.columns]]], ignore_index=True),
                   "train + data.events", report)


def _where(path: str, user_col: str | None, item_col: str) -> dict[str, str]:
    w = {"item": f"{path}, column {item_col!r}"}
    if user_col is not None:
        w["user"] = f"{path}, column {user_col!r}"
    return w


def read_items(path: str, item_col: str = "item", text_cols: list[str] | None = None,
               encoding: str = "utf-8", raw_ids: bool = False) -> pd.DataFrame:
    """Item table: column `item` plus text columns (all other columns when text_cols is None).
    Ids as in `read_interactions`; with raw_ids=True duplicate rows are left to the caller
    (`_dedupe_items`), after the id rule."""
    df = read_table(path, "items", encoding, id_cols=(item_col,), arg="data.items")
    return items_from_frame(df, path, item_col, text_cols, raw_ids)


def items_from_frame(df: pd.DataFrame, path: str, item_col: str = "item", text_cols: list[str] | None = None,
                     raw_ids: bool = False) -> pd.DataFrame:
    """read_items of a frame in memory; `path` names it in messages."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{path}: expected a pandas DataFrame, got {type(df).__name__}")
    require_columns(df, {"item": item_col}, path)
    if text_cols is None:
        text_cols = [c for c in df.columns if c != item_col]
    for c in text_cols:
        if c not in df.columns:
            raise DataError(f"{path}: no text column {c!r} (columns are {list(df.columns)})")
    if not text_cols:
        raise DataError(f"{path}: the items file has no text column besides {item_col!r}")
    out = pd.DataFrame({"item": df[item_col].to_numpy()})
    for c in text_cols:
        out[c] = df[c].fillna("").astype(str).to_numpy()
    if raw_ids:
        return out
    _apply_id_rule([(out, _where(path, None, item_col))])
    return _dedupe_items(out, path)


def _dedupe_items(items: pd.DataFrame, path: str) -> pd.DataFrame:
    dup = items["item"].duplicated(keep="last")
    if dup.any():
        log.warning("%s: %d duplicate item rows, kept the last of each", path, int(dup.sum()))
        items = items[~dup]
    return items.reset_index(drop=True)


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
    df = df[df["rating"] >= min_rating]
    if len(df) == 0:
        raise DataError(f"no interactions left after min_rating={min_rating} in {what}")
    return df


# ---------------------------------------------------------------------------------------------
# building


def _build(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
           items: pd.DataFrame | None, text_cols: list[str], tags: pd.DataFrame | None,
           tokenizer: WordTokenizer, min_count: int, max_tokens: int | None,
           report: dict, untagged: set | None = None, new_parts: dict | None = None,
           expect: dict[str, str] | None = None, shape: tuple[int, int] | None = None) -> Prepared:
    """expect: the held-out parts ("valid", "test") that were asked for -> where from (a file,
    or "data.split.test=0.1 of FILE"); one left empty after the drops below is a DataError."""
    # users: everybody with a training interaction, sorted for a deterministic order (a given
    # matrix's shape: every row is a user, every column an item, interactions or not)
    users = Vocab(sorted(set(pd.unique(train["user"])) | set(range(shape[0] if shape else 0))))
    # catalog: the item table plus every training item
    known = [] if items is None else list(items["item"])
    extra = sorted((set(pd.unique(train["item"])) | set(range(shape[1] if shape else 0))) - set(known))
    item_vocab = Vocab(sorted(known) + extra if items is not None else extra)
    if items is not None and extra:
        report["train_items_without_text"] = len(extra)
        log.warning("%d training items are not in the items file; they get no content tokens", len(extra))

    kept: dict[str, np.ndarray] = {}

    def to_pairs(df: pd.DataFrame, what: str) -> np.ndarray:
        u = users.index(df["user"], missing="drop_flag")
        i = item_vocab.index(df["item"], missing="drop_flag")
        ok = (u >= 0) & (i >= 0)
        kept[what] = ok
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
    ratings = valid_ratings = None
    if "rating" in train:   # train rows all map (users and catalog are built from train)
        ratings = train["rating"].to_numpy(dtype=np.float32)
    n_items = len(item_vocab)
    masked = tr[:, 0] * n_items + tr[:, 1]        # (user, item) keys seen before the part being ranked
    parts = {}
    for what, df in (("valid", valid), ("test", test)):
        p = to_pairs(df, what)
        inter = member(p[:, 0] * n_items + p[:, 1], masked)
        if inter.any():
            report[f"{what}_rows_already_seen"] = int(inter.sum())
            log.warning("%s: dropped %d (user, item) pairs already in train%s", what, int(inter.sum()),
                        "" if what == "valid" else " or valid")
        parts[what] = p[~inter]
        if what == "valid":
            valid_times = _row_times(df)[kept[what]][~inter]
        if what == "valid" and ratings is not None and "rating" in df:
            valid_ratings = df["rating"].to_numpy(dtype=np.float32)[kept[what]][~inter]
        # test ranks with train + valid masked, so a test pair that is also in valid is dropped too
        masked = np.concatenate([masked, parts[what][:, 0] * n_items + parts[what][:, 1]])
    for what, df in (("test", test), ("valid", valid)):
        if what in (expect or {}) and len(parts[what]) == 0:
            _no_pairs_left(what, expect[what], len(df), report)

    # item text: fields of the item table, plus tags not taken from held-out pairs
    fields, titles, attributes = _item_text(item_vocab, items, text_cols, tags, valid, test, report,
                                            untagged, new_parts)
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
                    text_fields=list(text_cols) + (["tags"] if tags is not None and len(tags) else []),
                    valid_ratings=valid_ratings, item_attributes=attributes,
                    train_times=_row_times(train)[kept["train"]], valid_times=valid_times)
    if new_parts:
        _add_new_users(prep, new_parts, report)
    report.update(n_users=prep.n_users, n_items=prep.n_items, n_tokens=len(tokens),
                  n_train=len(tr), n_valid=len(parts["valid"]), n_test=len(parts["test"]),
                  n_cold_items=int((~prep.item_warm()).sum()))
    log.info("data: %s", report)
    return prep


def _item_text(item_vocab: Vocab, items: pd.DataFrame | None, text_cols: list[str], tags: pd.DataFrame | None,
               valid: pd.DataFrame, test: pd.DataFrame, report: dict, untagged: set | None,
               new_parts: dict | None) -> tuple[list[dict[str, str]], list, dict[str, list[str]]]:
    """(each catalog item's text fields, titles, attributes): the item table's columns, plus
    the user tags that no held-out pair, new user or held-out cold item gave (leaks)."""
    fields: list[dict[str, str]] = [dict() for _ in range(len(item_vocab))]
    titles = [str(i) for i in item_vocab.ids]
    attributes = {c: [""] * len(item_vocab) for c in text_cols} if items is not None else {}
    if items is not None:
        idx = item_vocab.index(items["item"])
        for c in text_cols:
            for n, t in zip(idx, items[c].tolist()):
                fields[n][c] = t
                attributes[c][n] = str(t)
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
    return fields, titles, attributes


def _no_pairs_left(what: str, where: str, n_rows: int, report: dict) -> None:
    """The one-line error for a held-out part asked for and left empty: every model is
    validated (early stopping, model choice) and tested on these pairs."""
    drops = [(f"{what}_rows_unknown_user", "of users with no training interaction"),
             (f"{what}_rows_unknown_item", "of items not in the catalog"),
             (f"{what}_rows_already_seen", "already in train" + (" or valid" if what == "test" else ""))]
    why = [f"{report[k]} {text}" for k, text in drops if report.get(k)]
    reason = (f"all {n_rows} rows dropped: " + ", ".join(why) if n_rows and why
              else "no rows held out: users have too few interactions for it")
    name = "test" if what == "test" else "validation"
    raise DataError(f"no {name} pairs left from {where} ({reason}); every model needs {name} pairs")


def _split_expects(split: dict, path: str) -> dict[str, str]:
    """The held-out parts a split asks for (ratio or count > 0, its own default when unset)."""
    params = inspect.signature(SPLITS[split.get("kind", "random")]).parameters
    out = {}
    for what in ("valid", "test"):
        v = split.get(what, params[what].default if what in params else 0)
        if v and float(v) > 0:
            out[what] = f"data.split.{what}={v} of {path}"
    return out


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


VALID_SPLITS = ("random", "last")


def _carve_valid(train: pd.DataFrame, valid_ratio: float, seed: int, valid_split: str = "random"):
    """Validation carved from a given train file: per user, a random `valid_ratio`, or with
    valid_split="last" each user's last train event by time (users with one event keep it)."""
    if valid_split not in VALID_SPLITS:
        raise DataError(f"data.valid_split={valid_split!r} is not one of {VALID_SPLITS}")
    if valid_ratio <= 0:
        return train, train.iloc[:0]
    if valid_split == "last":
        if "timestamp" not in train:
            raise DataError("data.valid_split=last needs a timestamp column in data.train (set data.time_col)")
        tr, va, _ = _split(train, {"kind": "leave_last", "valid": 1, "test": 0})
        return tr, va
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
                      split: dict | None = None, tokens: dict | None = None,
                      require_held_out: bool = True, events: str | None = None) -> Prepared:
    """MovieLens (ml-latest-small layout). Item text = title, genres, user tags.
    require_held_out: as in `prepare_files`. events: the service's event log, appended to the
    training interactions (never to valid/test)."""
    report: dict = {}
    rpath, mpath, tpath = (os.path.join(path, f) for f in ("ratings.csv", "movies.csv", "tags.csv"))
    ratings = read_interactions(rpath, "userId", "movieId", "rating", "timestamp", raw_ids=True)
    movies = read_table(mpath, "items", id_cols=("movieId",))
    require_columns(movies, {"item": "movieId", "title": "title", "genres": "genres"}, mpath)
    items = pd.DataFrame({"item": movies["movieId"].to_numpy(),
                          "title": movies["title"].fillna("").astype(str),
                          "genres": movies["genres"].fillna("").astype(str)
                          .str.replace("(no genres listed)", "", regex=False).str.replace("|", " ")})
    frames = [(ratings, _where(rpath, "userId", "movieId")), (items, _where(mpath, None, "movieId"))]
    tags = None
    if use_tags:
        t = read_table(tpath, "tags", id_cols=("userId", "movieId"))
        require_columns(t, {"user": "userId", "item": "movieId", "tag": "tag"}, tpath)
        tags = pd.DataFrame({"user": t["userId"].to_numpy(), "item": t["movieId"].to_numpy(),
                             "tag": t["tag"].fillna("").astype(str)})
        frames.append((tags, _where(tpath, "userId", "movieId")))
    ev, ev_lines = read_events(events, ratings) if events else (None, 0)
    if ev is not None:
        frames.append((ev, _where(events, "user", "item")))
    _apply_id_rule(frames)
    df = _dedupe(_implicit(ratings, min_rating, rpath), "ratings.csv", report)
    split = split or {"kind": "random", "valid": 0.1, "test": 0.1, "seed": 2026}
    new_parts: dict = {}
    tr, va, te = _split(df, split, new_parts)
    tr = _with_events(tr, ev, report)
    tok, mc, ms = _tokenizer(tokens or {"prefix_fields": ["genres"], "min_count": 2})
    # cold-item protocol: the held-out items lose all user tags, not only the held-out pairs'
    untagged = set(te["item"]) - set(tr["item"]) - set(va["item"]) if split.get("kind") == "colditems" else None
    prep = _build(tr, va, te, items, ["title", "genres"], tags, tok, mc, ms, report, untagged, new_parts,
                  expect=_split_expects(split, rpath) if require_held_out else None)
    prep.events_through = ev_lines
    return prep


def _clean(raw: dict[str, pd.DataFrame], where: dict[str, str], item_df: pd.DataFrame | None,
           items_where: str | None, user_col: str, item_col: str, items_item_col: str | None,
           text_cols: list[str] | None, min_rating: float | None, report: dict):
    """Interaction parts and the item table as read (raw ids) -> (parts cleaned: id rule over
    all of them, implicit positives, duplicates dropped; the item table deduplicated; its text
    columns). where: each part's file (or frame) name for the messages."""
    frames = [(raw[what], _where(where[what], user_col, item_col)) for what in raw]
    if item_df is not None:
        frames.append((item_df, _where(items_where, None, items_item_col or item_col)))
        text_cols = [c for c in item_df.columns if c != "item"]
    _apply_id_rule(frames)
    if item_df is not None:
        item_df = _dedupe_items(item_df, items_where)
    load = {what: _dedupe(_implicit(raw[what], min_rating, where[what]), what, report) for what in raw}
    return load, item_df, text_cols


def prepare_files(interactions: str | None = None, train: str | None = None,
                  test: str | None = None, valid: str | None = None, items: str | None = None,
                  user_col: str = "user", item_col: str = "item",
                  rating_col: str | None = "rating", time_col: str | None = "timestamp",
                  items_item_col: str | None = None, text_cols: list[str] | None = None,
                  min_rating: float | None = None, encoding: str = "utf-8",
                  split: dict | None = None, valid_ratio: float = 0.1, seed: int = 2026,
                  tokens: dict | None = None, require_held_out: bool = True,
                  events: str | None = None, valid_split: str = "random") -> Prepared:
    """A user's own files. Either `interactions` (split by `split`) or `train` + `test`
    (+ optional `valid`; otherwise a per-user `valid_ratio` of train is carved out, or with
    valid_split="last" each user's last train event: the next-item protocol).
    Ids follow one id rule over all the files (recsys/data/ids.py). A test part, or a valid
    part asked for (a valid file, valid_ratio > 0, data.split.valid > 0), left with no pairs is
    a DataError; require_held_out=False allows it (a model or export built for use, not
    evaluated). events: the service's event log, appended to the training interactions."""
    report: dict = {}
    if interactions is not None:
        if train is not None or test is not None:
            raise DataError("give either data.interactions or data.train/data.test, not both")
        paths = {"interactions": interactions}
    elif train is not None and test is not None:
        paths = {"train": train, "test": test, **({"valid": valid} if valid is not None else {})}
    else:
        raise DataError("no interactions: set data.interactions=FILE, or data.train=FILE and data.test=FILE")
    raw = {what: read_interactions(p, user_col, item_col, rating_col, time_col, encoding, raw_ids=True,
                                   what=what, arg=f"data.{what}") for what, p in paths.items()}
    item_df = None if items is None else read_items(items, items_item_col or item_col, text_cols, encoding,
                                                    raw_ids=True)
    where = dict(paths)
    ev_lines = 0
    if events:
        raw["events"], ev_lines = read_events(events, next(iter(raw.values())))
        where["events"] = events
    load, item_df, text_cols = _clean(raw, where, item_df, items, user_col, item_col, items_item_col, text_cols,
                                      min_rating, report)

    if interactions is not None:
        new_parts: dict = {}
        split = split or {"kind": "random"}
        tr, va, te = _split(load["interactions"], split, new_parts)
        expect = _split_expects(split, interactions)
    else:
        tr, te = load["train"], load["test"]
        expect = {"test": test}
        if valid is not None:
            va = load["valid"]
            expect["valid"] = valid
        else:
            tr, va = _carve_valid(tr, valid_ratio, seed, valid_split)
            if valid_ratio > 0:
                expect["valid"] = (f"data.valid_split=last of {train}" if valid_split == "last" else
                                   f"data.valid_ratio={valid_ratio} of {train}")
    tr = _with_events(tr, load.get("events"), report)
    tok, mc, ms = _tokenizer(tokens)
    prep = _build(tr, va, te, item_df, text_cols or [], None, tok, mc, ms, report,
                  new_parts=new_parts if interactions is not None else None,
                  expect=expect if require_held_out else None)
    prep.valid_carved = interactions is None and valid is None and valid_ratio > 0
    prep.events_through = ev_lines
    return prep


def prepare_frames(interactions: pd.DataFrame, items: pd.DataFrame | None = None,
                   user_col: str = "user", item_col: str = "item", rating_col: str | None = "rating",
                   time_col: str | None = "timestamp", items_item_col: str | None = None,
                   text_cols: list[str] | None = None, min_rating: float | None = None,
                   valid_ratio: float = 0.0, seed: int = 2026, tokens: dict | None = None,
                   valid_split: str = "random", shape: tuple[int, int] | None = None) -> Prepared:
    """Frames in memory, for a model fitted for use (recsys.fit): every interaction is training
    data except a per-user `valid_ratio` carved out for validation; there is no test part. The
    same id rule, cleaning and token bags as prepare_files (the frames are read as files are:
    their id columns under the id rule, ratings and timestamps numeric). shape (rows, columns):
    the frame's ids are a matrix's row and column indices, and every index up to it is a user /
    an item, with interactions or not."""
    report: dict = {}
    where = "interactions frame"
    raw = {"train": interactions_from_frame(interactions, where, user_col, item_col, rating_col, time_col,
                                            raw_ids=True)}
    item_df = None if items is None else items_from_frame(items, "items frame", items_item_col or item_col,
                                                          text_cols, raw_ids=True)
    load, item_df, text_cols = _clean(raw, {"train": where}, item_df, "items frame", user_col, item_col,
                                      items_item_col, text_cols, min_rating, report)
    tr, va = _carve_valid(load["train"], valid_ratio, seed, valid_split)
    te = tr.iloc[:0]
    tok, mc, ms = _tokenizer(tokens)
    prep = _build(tr, va, te, item_df, text_cols or [], None, tok, mc, ms, report, new_parts=None, expect=None,
                  shape=shape)
    prep.valid_carved = valid_ratio > 0
    return prep
