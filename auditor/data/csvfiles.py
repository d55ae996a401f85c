"""Reading user CSV files (manifests, metadata, split lists) into string tables, with one-line DataErrors.

Also owns column-name sanitising and numeric inference for `meta_` columns. Never resolves paths.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from auditor.errors import DataError

# Line number in the file of data row 0 (line 1 is the header).
FIRST_DATA_LINE = 2


def sanitise_column_name(name: str) -> str:
    """snake_case form of a column name: 'Scanner ID' -> 'scanner_id', 'skinTone' -> 'skin_tone'."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name).strip())
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    return text


def read_csv_strings(path: Path, *, what: str, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read `path` with every cell as a stripped string ('' for empty) and snake_case column names.

    A column whose name equals one of `keys` ignoring case and surrounding spaces (e.g. 'FilePath') is named
    exactly that key; all others are sanitised with `sanitise_column_name`.

    `what` names the file's role in messages (e.g. 'CSV manifest'). Raises DataError if the file is missing,
    unreadable, not UTF-8, malformed, has no header, or has two columns with the same sanitised name.
    """
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a file; check the path")
    try:
        # header=None: pandas would silently rename a repeated column ('label' -> 'label.1'); we want to refuse it
        raw = pd.read_csv(
            path,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty; it needs a header row and one row per file") from None
    except (pd.errors.ParserError, csv.Error) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DataError(f"{what} {path} is not a valid CSV ({reason}); fix the quoting/column count") from None
    except UnicodeDecodeError:
        raise DataError(f"{what} {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    header = [str(c) for c in raw.iloc[0]]
    frame = raw.iloc[1:].reset_index(drop=True).fillna("")  # fillna: short rows leave NaN in the missing cells
    frame.columns = header
    seen: set[str] = set()
    for name in header:
        if name.strip().lower() in seen:
            raise DataError(f"{what} {path}: the header names column {name.strip()!r} twice; remove or rename one")
        seen.add(name.strip().lower())
    by_lower = {key.lower(): key for key in keys}
    names = [by_lower.get(str(c).strip().lower(), sanitise_column_name(c)) for c in frame.columns]
    if any(not n for n in names):
        raise DataError(f"{what} {path} has an empty or unusable column name in {list(frame.columns)}; name it")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(
            f"{what} {path}: columns {list(frame.columns)} collide after conversion to snake_case "
            f"({', '.join(duplicated)}); rename them"
        )
    frame.columns = names
    return frame.apply(lambda col: col.str.strip())


# Cells that spreadsheets, R and pandas write for "no value". Read as missing so that one 'NA' in a numeric
# column does not turn the whole column into strings (and its slices into categories).
MISSING_MARKERS = frozenset({"", "NA", "N/A", "n/a", "#N/A", "<NA>", "NaN", "nan", "-nan", "NULL", "null", "None"})


def infer_meta_column(values: pd.Series) -> pd.Series:
    """Metadata cells as numbers if every non-missing cell is numeric, else strings; MISSING_MARKERS become NaN."""
    blank = values.isin(MISSING_MARKERS)
    cleaned = values.mask(blank)
    try:
        numeric = pd.to_numeric(cleaned)
    except (ValueError, TypeError):
        return cleaned
    if blank.any() or not (numeric.dropna() % 1 == 0).all():
        return numeric.astype("float64")
    return numeric.astype("int64")


def require_columns(frame: pd.DataFrame, required: list[str], *, path: Path, what: str, hint: str) -> None:
    """DataError naming the file, the missing columns and the ones it has, if `frame` lacks any of `required`."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{what} {path} has no {' / '.join(repr(c) for c in missing)} column (columns: "
            f"{', '.join(frame.columns) or 'none'}); {hint}"
        )
