"""Fuzzing the data loader (docs/bad_input.md, "Data files and ids").

Random small CSV and Parquet files (ids negative, huge, unicode, blank, padded with whitespace,
with leading zeros, mixed ints and strings, floats such as 1.0, NaN, booleans, bytes; odd rating
cells; header-only frames; huge cells; duplicated rows; missing columns) go through the public
`prepare_files`. The property: either preparation succeeds and every kept id is, exactly, what
the file said under the id rule (recsys/data/ids.py) - computed here independently from the file
as pandas reads it back - with a warning whenever two distinct raw ids became one; or it fails
with the package's own one-line error (a ValueError subclass defined in recsys, such as
DataError). Any other exception fails the test, and so does accepting a file with a missing or
unreadable id.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.prepare import prepare_files

pytestmark = pytest.mark.filterwarnings("ignore")
INVALID = object()
PLAIN = re.compile(r"0|-?[1-9][0-9]*")

# ---------------------------------------------------------------------------------------------
# the oracle: the id rule written out again, on values as pandas reads the file back


def text_of(v):
    """The id text of one raw value (rule 1), or INVALID."""
    if v is None or v is pd.NA or v is pd.NaT:
        return INVALID
    if isinstance(v, (bool, np.bool_)):
        return INVALID
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if math.isfinite(v) and float(v).is_integer() else INVALID
    if isinstance(v, str):
        return v.strip() or INVALID
    return INVALID


def is_plain(t: str) -> bool:
    return PLAIN.fullmatch(t) is not None and -2 ** 63 <= int(t) < 2 ** 63


def file_values(path: str, col: str) -> list | None:
    """The raw values of a column as the file holds them (CSV: text as written), or None when
    the file or column cannot be read."""
    try:
        if path.endswith(".parquet"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception:
        return None
    if col not in df.columns or len(df) == 0:
        return None
    s = df[col]
    if isinstance(s, pd.DataFrame):
        return None
    return list(s.astype(object)) if isinstance(s.dtype, pd.CategoricalDtype) else list(s.to_numpy(dtype=object))


def mixed(values: list) -> bool:
    """Strings and numbers in one column (an object column; CSV text never is)."""
    strs = any(isinstance(v, str) for v in values)
    nums = any(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values)
    return strs and nums


def expected_ids(columns: list[list]) -> tuple[dict | None, bool]:
    """({raw text -> id} over the columns of one role, some raw ids collapsed), or (None, _)
    when some id is missing or unreadable (preparation must fail)."""
    texts = []
    for values in columns:
        if mixed(values):
            return None, False
        t = [text_of(v) for v in values]
        if any(x is INVALID for x in t):
            return None, False
        texts.append(t)
    flat = [x for t in texts for x in t]
    as_int = all(is_plain(x) for x in flat)
    ident = {x: (int(x) if as_int else x) for x in flat}
    raws: dict[str, set] = {}
    for values, t in zip(columns, texts):
        for v, x in zip(values, t):
            raws.setdefault(x, set()).add(v if isinstance(v, str) else x)
    return ident, any(len(r) > 1 for r in raws.values())


# ---------------------------------------------------------------------------------------------
# strategies

odd_text = st.sampled_from(["001", "1", " 1", "1 ", "\t7", "7", "1.0", "-0", "0", "-5", "+1", "1e3",
                            "١", "nan", "NaN", "NA", "None", "null", "", " ", "bob", "Bob ", "x,y",
                            'q"uote', "new\nline", "é", "日本", "🙂", "9223372036854775807",
                            "9223372036854775808", "-9223372036854775809", "\u00a0", "a\u00a0"])
small_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
id_value = st.one_of(st.integers(0, 6), st.integers(-2 ** 70, 2 ** 70), odd_text, small_text,
                     st.sampled_from([1.0, 2.0, -0.0, 1.5, float("nan"), float("inf"), 1e20]),
                     st.sampled_from(["z" * 20_000]))


RARE_KINDS = ["float", "bool", "bytes", "nullable", "uint", "category", "datetime"]


@st.composite
def id_pool(draw, fmt: str, size: int):
    """(kind, a few distinct-ish raw ids): the ids one role draws from in every file of a case,
    so the files share users and items. Odd kinds are rarer than plain ints and strings."""
    kinds = ["int"] * 3 + ["str"] * 4 + ["mixed"] * 2 + ["padded"] * 2 + (RARE_KINDS if fmt == "parquet" else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "padded":          # the same ids with and without surrounding whitespace: they merge
        base = draw(st.lists(st.one_of(st.integers(0, 9).map(str), st.sampled_from(["bob", "001", "é"])),
                             min_size=1, max_size=3, unique=True))
        pad = st.sampled_from([" ", "  ", "\t", "\u00a0", "\u3000"])
        return "str", base + [draw(pad) + b + draw(pad) for b in base[: draw(st.integers(1, len(base)))]]
    if kind == "int":
        pool = draw(st.lists(st.one_of(st.integers(0, 9), st.integers(-2 ** 63, 2 ** 63 - 1)), min_size=1, max_size=size))
    elif kind == "str":
        pool = draw(st.lists(st.one_of(odd_text, small_text, st.integers(0, 9).map(str)), min_size=1, max_size=size))
    elif kind == "float":
        pool = draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, -0.0, 4.0, 1e20, 1.5, float("nan"), float("inf")]),
                             min_size=1, max_size=size))
    elif kind == "bool":
        pool = [True, False]
    elif kind == "bytes":
        pool = [b"a", b"b"]
    elif kind == "uint":
        pool = draw(st.lists(st.integers(0, 2 ** 64 - 1), min_size=1, max_size=size))
    elif kind == "datetime":
        pool = list(pd.to_datetime(["2020-01-01", "2021-06-01"]))
    else:   # mixed / nullable / category
        pool = draw(st.lists(id_value, min_size=1, max_size=size))
    return kind, pool


def id_column(draw, kind: str, pool: list, n: int, fmt: str) -> pd.Series:
    """n ids drawn from the pool, typed for the kind (Parquet holds no mixed object column)."""
    values = [draw(st.sampled_from(pool)) for _ in range(n)]
    if kind == "int":
        return pd.Series(values, dtype=np.int64)
    if kind == "uint":
        return pd.Series(values, dtype=np.uint64)
    if kind == "float":
        return pd.Series(values, dtype=np.float64)
    if kind == "nullable":
        return pd.Series([v if isinstance(v, int) and abs(v) < 2 ** 63 else None for v in values], dtype="Int64")
    if kind == "category":
        return pd.Series([str(v) for v in values], dtype="category")
    if kind == "str" or (kind == "mixed" and fmt == "parquet"):
        return pd.Series([str(v) for v in values], dtype=object)
    return pd.Series(values, dtype=object)


@st.composite
def frame(draw, fmt: str, pools: dict, max_rows: int = 10):
    # rare branches on a middle value: Hypothesis favours the ends of a range
    n = 0 if draw(st.integers(0, 12)) == 6 else draw(st.integers(3, max_rows))     # header-only
    df = pd.DataFrame({role: id_column(draw, *pools[role], n, fmt) for role in ("user", "item")})
    if draw(st.booleans()):
        df["rating"] = pd.Series(draw(st.lists(st.sampled_from([1.0, 3.0, 4.0, 5.0, 2.5]), min_size=n, max_size=n)),
                                 dtype=object)
        if n and draw(st.integers(0, 8)) == 4:       # one odd rating cell
            bad = [float("nan"), float("inf")] + (["x", "", " 4"] if fmt == "csv" else [])
            df.loc[draw(st.integers(0, n - 1)), "rating"] = draw(st.sampled_from(bad))
        if fmt == "parquet":
            df["rating"] = df["rating"].astype(np.float64)
    if draw(st.booleans()):
        df["timestamp"] = draw(st.lists(st.integers(0, 10 ** 10), min_size=n, max_size=n))
    if n and draw(st.integers(0, 4)) == 0:          # duplicated rows
        df = pd.concat([df, df.iloc[: draw(st.integers(1, n))]], ignore_index=True)
    drop = draw(st.integers(0, 20))                  # a missing column
    if drop in (9, 11):
        df = df.drop(columns=["user" if drop == 9 else "item"])
    return df


def write(df: pd.DataFrame, path: str) -> bool:
    """False when this frame cannot be written in that format (then there is nothing to test)."""
    try:
        if path.endswith(".parquet"):
            df.to_parquet(path, index=False)
        else:
            df.to_csv(path, index=False)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# the property


def check(files: dict[str, str], items: str | None, kwargs: dict) -> None:
    """Run prepare_files on the files and check the property."""
    handler = _Records()
    logger = logging.getLogger("recsys.data.ids")
    logger.addHandler(handler)
    try:
        prep = prepare_files(**files, items=items, **kwargs)
        error = None
    except Exception as e:          # judged below
        prep, error = None, e
    finally:
        logger.removeHandler(handler)

    role_cols = {"user": [], "item": []}
    readable = True
    for path in files.values():
        for role in ("user", "item"):
            v = file_values(path, role)
            readable &= v is not None
            role_cols[role].append(v or [])
    if items is not None:
        v = file_values(items, "item")
        readable &= v is not None
        role_cols["item"].append(v or [])
    users, ucollapse = expected_ids(role_cols["user"])
    item_ids, icollapse = expected_ids(role_cols["item"])

    if error is not None:
        assert isinstance(error, ValueError) and type(error).__module__.startswith("recsys."), \
            f"{type(error).__module__}.{type(error).__name__}: {error}"
        msg = str(error)
        assert msg and "\n" not in msg, repr(msg)
        return
    assert readable and users is not None and item_ids is not None, \
        "preparation accepted a file with a missing, unreadable or mixed-type id"
    # every kept id is exactly what the file said under the rule, of the rule's type
    assert set(prep.users.ids) <= set(users.values()) and set(prep.items.ids) <= set(item_ids.values())
    for got, want in ((prep.users.ids, users), (prep.items.ids, item_ids)):
        kinds = {type(v) for v in want.values()}
        assert {type(v) for v in got} <= kinds
    if items is not None:               # the whole items file is in the catalog
        assert {item_ids[text_of(v)] for v in role_cols["item"][-1]} <= set(prep.items.ids)
    # the pairs: every (user, item) row of the files is kept, or counted as dropped
    pairs = {}
    for (what, path), ucol, icol in zip(files.items(), role_cols["user"], role_cols["item"]):
        pairs[what] = {(users[text_of(u)], item_ids[text_of(i)]) for u, i in zip(ucol, icol)}
    got = {part: {(prep.users.ids[u], prep.items.ids[i]) for u, i in getattr(prep, part)}
           for part in ("train", "valid", "test")}
    assert len(got["train"]) == len(prep.train)               # no pair twice
    r = prep.report
    dropped = {p: sum(r.get(f"{p}_rows_{k}", 0) for k in ("unknown_user", "unknown_item", "already_seen"))
               for p in ("valid", "test")}
    filtered = kwargs.get("min_rating") is not None
    if "interactions" in pairs:
        kept = got["train"] | got["valid"] | got["test"]
        assert kept <= pairs["interactions"]
        if not filtered:
            assert len(prep.train) + len(prep.valid) + len(prep.test) + dropped["valid"] + dropped["test"] \
                == len(pairs["interactions"])
    else:
        assert got["train"] | got["valid"] <= pairs["train"] and got["test"] <= pairs["test"]
        if not filtered:
            assert len(prep.test) + dropped["test"] == len(pairs["test"])
            assert len(prep.train) + len(prep.valid) + dropped["valid"] == len(pairs["train"])
    # no silent merging: distinct raw ids that became one id were warned about
    warned = any("differ only by surrounding whitespace" in m for m in handler.messages)
    assert warned == (ucollapse or icollapse), (handler.messages, ucollapse, icollapse)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@st.composite
def case(draw, max_rows: int = 10):
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    pools = {"user": draw(id_pool(fmt, 3)), "item": draw(id_pool(fmt, 8))}
    presplit = draw(st.integers(0, 2)) == 2
    frames = {"train": draw(frame(fmt, pools, max_rows)), "test": draw(frame(fmt, pools, max_rows))} if presplit \
        else {"interactions": draw(frame(fmt, pools, max_rows))}
    items = None
    if draw(st.integers(0, 2)) == 0:
        n = 0 if draw(st.integers(0, 12)) == 6 else draw(st.integers(1, 6))
        items = pd.DataFrame({"item": id_column(draw, *pools["item"], n, fmt),
                              "title": draw(st.lists(small_text, min_size=n, max_size=n))})
    has_rating = all("rating" in df for df in frames.values())
    kwargs = {"min_rating": draw(st.sampled_from([None] * 6 + [3.0, 100.0])) if has_rating else None}
    if presplit:
        kwargs["valid_ratio"] = draw(st.sampled_from([0.0, 0.0, 0.5]))
    else:
        v, t = draw(st.sampled_from([(0.0, 0.0), (0.0, 0.0), (0.0, 0.3), (0.3, 0.3)]))
        kwargs["split"] = {"kind": "random", "valid": v, "test": t, "seed": 0}
    return fmt, frames, items, kwargs


def _run(fmt, frames, items, kwargs):
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for what, df in frames.items():
            p = os.path.join(d, f"{what}.{fmt}")
            if not write(df, p):
                return
            files[what] = p
        ipath = None
        if items is not None:
            ipath = os.path.join(d, f"items.{fmt}")
            if not write(items, ipath):
                return
        check(files, ipath, kwargs)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case())
def test_loader_round_trips_ids_or_fails_with_its_own_error(c):
    _run(*c)


def _slow_selected(config) -> bool:
    """pytest's -m names `slow` (the marker is registered, but nothing deselects it by default)."""
    return "slow" in (config.getoption("markexpr") or "").replace("not slow", "")


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(c=case(max_rows=40))
def test_loader_round_trips_ids_or_fails_with_its_own_error_long(request, c):
    """3,000 more cases, larger frames, a new seed each run: `pytest -m slow tests/test_fuzz_data.py`."""
    if not _slow_selected(request.config):
        pytest.skip("3,000 fuzz cases: run with -m slow")
    _run(*c)


def test_the_fuzz_checks_catch_a_silent_merge(tmp_path):
    """The property is not vacuous: a file whose " 7" and "7" merge passes only with the warning,
    and a missing id must be refused."""
    p = str(tmp_path / "i.csv")
    pd.DataFrame({"user": ["a", "a", "b", "b"], "item": [" 7", "7", "7", "8"]}).to_csv(p, index=False)
    assert expected_ids([file_values(p, "item")])[1] is True
    check({"interactions": p}, None, {"split": {"kind": "random", "valid": 0.0, "test": 0.0}})
    pd.DataFrame({"user": ["a", ""], "item": ["1", "2"]}).to_csv(p, index=False)
    assert expected_ids([file_values(p, "user")])[0] is None
    check({"interactions": p}, None, {"split": {"kind": "random", "valid": 0.0, "test": 0.0}})
