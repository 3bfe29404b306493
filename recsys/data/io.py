"""Reading user tables (CSV or Parquet) with one-line errors that name the file and column."""
from __future__ import annotations

import os

import pandas as pd


class DataError(ValueError):
    """Bad input data. The message names the file, column or argument at fault."""


def read_table(path: str, what: str = "table", encoding: str = "utf-8", id_cols: tuple = (),
               arg: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension; anything not .parquet/.pq is read as CSV).
    id_cols: columns a CSV gives as written (text), for the id rule (recsys/data/ids.py) to read.
    arg: the option that named the file ("data.train"), for the messages."""
    if path is None:
        raise DataError(f"no {what} file given" + (f" ({arg})" if arg else ""))
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}")
    is_parquet = path.endswith((".parquet", ".pq"))
    if os.path.isdir(path) and not is_parquet:     # a .parquet folder is a partitioned dataset
        raise DataError(f"{arg or what + ' file'}={path} is a directory; give a CSV or Parquet file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataError(f"{what} file is empty: {path}")
    try:
        if is_parquet:
            df = pd.read_parquet(path)
        else:
            df = _read_csv(path, encoding, id_cols)
    except UnicodeDecodeError as e:
        raise DataError(f"{what} file {path} is not valid {encoding} text (byte {e.start}); "
                        f"pass the right encoding") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise DataError(f"cannot read {what} file {path}: {_first_line(e)}") from None
    if len(df) == 0:
        raise DataError(f"{what} file has a header but no rows: {path}")
    return df


ARROW_CSV_BYTES = 8 << 20      # from this size CSVs are parsed by pyarrow (5x faster with text ids)


def _read_csv(path: str, encoding: str, id_cols: tuple) -> pd.DataFrame:
    """The CSV with id columns as text and only empty cells missing. Large files go through
    pandas' pyarrow engine (same frame: tests/test_bad_data.py), falling back to the C engine,
    whose messages the errors then carry, when pyarrow cannot read a file."""
    kw = dict(encoding=encoding, keep_default_na=False, na_values=[""], dtype={c: str for c in id_cols})
    if os.path.getsize(path) >= ARROW_CSV_BYTES:
        try:
            return pd.read_csv(path, engine="pyarrow", **kw)
        except Exception:      # noqa: BLE001 (any pyarrow failure: the C engine decides)
            pass
    return pd.read_csv(path, **kw)


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def require_columns(df: pd.DataFrame, cols: dict[str, str | None], path: str) -> None:
    """cols: role -> column name (None = optional and absent)."""
    for role, col in cols.items():
        if col is not None and col not in df.columns:
            raise DataError(f"{path}: no column {col!r} for the {role} "
                            f"(columns are {list(df.columns)}; set data.{role}_col)")
