"""The id rule: how a column of user or item ids in a file becomes the ids recsys stores.

1. Every raw id becomes its text: a string as written, without surrounding whitespace (Python's
   `str.strip`); an integer in decimal; a whole float (a Parquet float column: 7.0) as that
   integer ("7"). Missing or empty ids, fractional or infinite floats, other types (bool,
   bytes, dates) and columns mixing strings with numbers are a `DataError` naming the column.
2. If every text of a column is a plain integer - `0` or an optional `-` and digits 0-9 with no
   leading zero, within int64 - the ids are those integers; otherwise every id is its text, a
   string. The rule looks at all files sharing the column at once (the user column of the
   train/valid/test files; the item column of those and of the items file), so one file cannot
   read "7" as an integer while another reads it as a string. "001" and "1" in one column are
   two string ids, never one item; "1".."60" plus "bob" are 61 string ids.
3. Distinct raw ids with one text (" 7" and "7") are one id; a warning names the column and
   examples.
4. Later ids (a test file at evaluation, new items for a trained catalog) follow the vocabulary
   made under the rule (`conform_ids`): in an integer vocabulary a plain-integer text is that
   integer; in a string vocabulary every id is its text.

    >>> clean_ids([pd.Series(["1", "60", "bob"])], ["f.csv, column 'user'"])[0].tolist()
    ['1', '60', 'bob']
    >>> clean_ids([pd.Series(["1", " 60"])], ["f.csv, column 'user'"])[0].tolist()
    [1, 60]

Only numpy and pandas: the serving path (recsys/serve) uses it without the preparation code.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from recsys.data.io import DataError

log = logging.getLogger(__name__)

PLAIN_INT = r"0|-?[1-9][0-9]*"     # ASCII digits only: Python's int() also reads "١" and "1_0"
_INT64 = 2 ** 63
# an id starting or ending with whitespace: the characters of Python's str.isspace (a test checks
# the list); none is special inside a character class, for Python's re and for Arrow's RE2 alike
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_PADDED = f"^[{WHITESPACE}]|[{WHITESPACE}]$"


def id_texts(s: pd.Series, where: str) -> pd.Series:
    """The text of each raw id (rule 1), as a string Series aligned with `s`. `where` names the
    file and column in errors ("train.csv, column 'user'")."""
    return _texts(s, where)[0].astype(str)


def clean_ids(columns: Sequence[pd.Series], where: Sequence[str]) -> list[pd.Series]:
    """The ids of columns that share one id space (rules 1-3): int64 Series when every text of
    every column is a plain integer, else string Series. Aligned with the inputs."""
    texts, raws = zip(*(_texts(s, w) for s, w in zip(columns, where))) if len(columns) else ((), ())
    _warn_collapsed(texts, raws, where)
    if all(_all_plain_int(t) for t in texts):
        return [_to_int64(t) if t.dtype != np.int64 else t for t in texts]
    return [t.astype(str) for t in texts]


def clean_id_column(s: pd.Series, where: str) -> pd.Series:
    """`clean_ids` of one column alone."""
    return clean_ids([s], [where])[0]


def conform_ids(s: pd.Series, where: str, known: Sequence, strict: bool = False) -> pd.Series:
    """Ids of `s` under the kind of an existing vocabulary `known` (rule 4), as an object
    Series of Python ints and strs aligned with `s`. An id that cannot be of that kind (a
    non-integer text for an integer vocabulary) stays its text and so matches nothing;
    strict=True refuses it with a `DataError` instead."""
    text = id_texts(s, where).astype(str)
    out = text.astype(object)
    if len(known) and not any(type(i) is int for i in known):
        return out
    plain = _plain_int(text)
    if not all(type(i) is int for i in known):
        # a vocabulary holding both kinds (an export made before the id rule): the integer
        # reading only where the text itself is not an id
        plain &= ~text.isin([i for i in known if isinstance(i, str)]).to_numpy()
    if strict and not plain.all():
        bad = pd.unique(text[~plain])[:3].tolist()
        raise DataError(f"{where}: ids {bad} are not integers, but the existing ids are integers "
                        f"(the id rule: docs/bad_input.md)")
    out[plain] = _to_int64(text[plain]).to_numpy().astype(object)
    return out


def _texts(s: pd.Series, where: str) -> tuple[pd.Series, pd.Series | None]:
    """(text (rule 1), the raw strings before stripping where that changed one, else None),
    aligned with `s`. An integer column within int64 comes back as int64 (its text is its
    decimal form)."""
    s = pd.Series(s)
    index = s.index
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    missing = s.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: missing id in data row {int(np.flatnonzero(missing)[0]) + 1}")
    if pd.api.types.is_bool_dtype(s):
        raise DataError(f"{where}: ids must be integers or strings, found booleans")
    if pd.api.types.is_integer_dtype(s):
        v = s.to_numpy()
        if v.dtype.kind == "u" and len(v) and v.max() >= _INT64:
            return pd.Series([str(int(x)) for x in v], index=index, dtype=str), None
        return pd.Series(v.astype(np.int64), index=index), None
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=np.float64)
        _check_floats(v, where)
        if len(v) == 0 or np.abs(v).max() < 2 ** 53:
            return pd.Series(v.astype(np.int64), index=index), None
        return pd.Series([str(int(x)) for x in v], index=index, dtype=str), None
    if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
        raise DataError(f"{where}: ids must be integers or strings, found {s.dtype}")
    if pd.api.types.is_object_dtype(s) and pd.api.types.infer_dtype(s, skipna=False) != "string":
        values = s.to_numpy(dtype=object)
        kinds = {_kind(v) for v in values}
        if None in kinds:
            bad = next(v for v in values if _kind(v) is None)
            raise DataError(f"{where}: ids must be integers or strings, found {type(bad).__name__} {_short(bad)}")
        if len(kinds) > 1:
            names = sorted({type(v).__name__ for v in values})
            raise DataError(f"{where}: ids of mixed types {names}; use one type per column")
        # an object column of numbers (a frame built in code)
        _check_floats(np.array([float(v) for v in values if isinstance(v, (float, np.floating))]), where)
        return pd.Series([str(int(v)) for v in values], index=index, dtype=str), None
    s = s.astype(str)
    if _plain_int(s).all():                 # the common case, vectorised: no text to strip
        return _to_int64(s), None
    pad = s.str.contains(_PADDED).to_numpy(dtype=bool, na_value=False)
    text = s
    if pad.any():
        text = s.copy()
        text[pad] = [v.strip() for v in s[pad]]        # Python's str.strip
    empty = (text.str.len() == 0).to_numpy()
    if empty.any():
        raise DataError(f"{where}: missing id in data row {int(np.flatnonzero(empty)[0]) + 1} (empty or blank)")
    return text, (s if pad.any() else None)


def _to_int64(text: pd.Series) -> pd.Series:
    """Plain-integer texts as int64 (pyarrow's cast when the strings live in Arrow: ~50x faster)."""
    if getattr(text.dtype, "storage", None) == "pyarrow":
        return pd.Series(text.astype("int64[pyarrow]").to_numpy(dtype=np.int64), index=text.index)
    return text.astype(np.int64)


def _check_floats(v: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(v)
    if bad.any():
        raise DataError(f"{where}: infinite id {v[bad][0]} in data row {int(np.flatnonzero(bad)[0]) + 1}")
    if not np.all(np.mod(v, 1) == 0):
        raise DataError(f"{where}: ids must be integers or strings, found fractional values")


def _kind(v) -> str | None:
    if isinstance(v, str):
        return "str"
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "number"
    return None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _plain_int(text: pd.Series) -> np.ndarray:
    """(N,) bool: the text is a plain integer within int64 (rule 2)."""
    if text.dtype == np.int64:
        return np.ones(len(text), dtype=bool)
    ok = np.array(text.str.fullmatch(PLAIN_INT).to_numpy(dtype=bool, na_value=False))
    long = ok & (text.str.len() >= 19).to_numpy(dtype=bool, na_value=False)
    if long.any():                      # int64 holds every 18-digit number, not every 19-digit one
        ok[long] = [-_INT64 <= int(t) < _INT64 for t in text[long]]
    return ok


def _all_plain_int(text: pd.Series) -> bool:
    return bool(_plain_int(text).all())


def _warn_collapsed(texts, raws, where) -> None:
    """Rule 3: warn when distinct raw ids (before stripping) share one text."""
    if all(r is None for r in raws):
        return
    changed = pd.concat([pd.DataFrame({"raw": r[r != t], "text": t[r != t]})
                         for t, r in zip(texts, raws) if r is not None])
    targets = set(changed["text"])
    # the same text written without whitespace, anywhere in the columns
    plain = set()
    for t, r in zip(texts, raws):
        written = r if r is not None else t.astype(str)
        plain.update(written[written.isin(targets)].tolist())
    pairs = pd.concat([changed.drop_duplicates(),
                       pd.DataFrame({"raw": sorted(plain), "text": sorted(plain)})]).drop_duplicates()
    merged = pairs[pairs["text"].duplicated(keep=False)]
    if len(merged):
        examples = "; ".join(" = ".join(repr(r) for r in g["raw"].tolist()[:3])
                             for _, g in list(merged.groupby("text", sort=True))[:3])
        cols = ", ".join(dict.fromkeys(w for w, r in zip(where, raws) if r is not None))
        log.warning("%s: ids that differ only by surrounding whitespace are one id: %s (%d such ids)",
                    cols, examples, merged["text"].nunique())
