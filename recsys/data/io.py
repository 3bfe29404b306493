"""Reading user tables (CSV or Parquet) with one-line errors that name the file and column."""
from __future__ import annotations

import os

import pandas as pd


class DataError(ValueError):
    """Bad input data. The message names the file, column or argument at fault."""


def read_table(path: str, what: str = "table", encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension; anything not .parquet/.pq is read as CSV)."""
    if path is None:
        raise DataError(f"no {what} file given")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{what} file is empty: {path}")
    try:
        if path.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, encoding=encoding, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as e:
        raise DataError(f"{what} file {path} is not valid {encoding} text (byte {e.start}); "
                        f"pass the right encoding") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise DataError(f"cannot read {what} file {path}: {str(e).splitlines()[0]}") from None
    if len(df) == 0:
        raise DataError(f"{what} file has a header but no rows: {path}")
    return df


def require_columns(df: pd.DataFrame, cols: dict[str, str | None], path: str) -> None:
    """cols: role -> column name (None = optional and absent)."""
    for role, col in cols.items():
        if col is not None and col not in df.columns:
            raise DataError(f"{path}: no column {col!r} for the {role} "
                            f"(columns are {list(df.columns)}; set data.{role}_col)")
