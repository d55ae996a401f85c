"""CSV manifest layout: `filepath,label[,split][,...]`, paths relative to the CSV's folder and kept inside it.

Extra columns become `meta_<column>`. Lists candidate files only; decoding happens later in `images`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from auditor.data.csvfiles import FIRST_DATA_LINE, infer_meta_column, read_csv_strings, require_columns
from auditor.data.paths import PathEscapeError, resolve_inside
from auditor.data.splits import normalise_split
from auditor.errors import DataError
from auditor.schema import FILEPATH, LABEL, META_PREFIX, RELPATH, SPLIT, SPLITS

logger = logging.getLogger(__name__)

WHAT = "CSV manifest"


def check_unique_relpaths(relpaths: list[str], *, path: Path, what: str) -> None:
    """DataError naming the file and both lines if two rows point at the same file."""
    first_line: dict[str, int] = {}
    for index, relpath in enumerate(relpaths):
        line = index + FIRST_DATA_LINE
        if relpath in first_line:
            raise DataError(
                f"{what} {path}: lines {first_line[relpath]} and {line} both list {relpath}; keep one row per file"
            )
        first_line[relpath] = line


def scan_csv_manifest(csv_path: Path) -> pd.DataFrame:
    """Candidate rows (relpath, filepath, split, label, meta_*) of a CSV manifest; split is None if absent."""
    root = csv_path.parent.resolve()
    table = read_csv_strings(csv_path, what=WHAT, keys=(FILEPATH, LABEL, SPLIT))
    require_columns(
        table,
        [FILEPATH, LABEL],
        path=csv_path,
        what=WHAT,
        hint="a manifest needs 'filepath' (relative to the CSV's folder) and 'label' columns",
    )
    has_split = SPLIT in table.columns and (table[SPLIT] != "").any()
    relpaths: list[str] = []
    filepaths: list[str] = []
    splits: list[str | None] = []
    split_values = table[SPLIT].tolist() if has_split else [""] * len(table)
    for index, (raw_path, label, raw_split) in enumerate(zip(table[FILEPATH], table[LABEL], split_values, strict=True)):
        line = index + FIRST_DATA_LINE
        if not raw_path:
            raise DataError(f"{WHAT} {csv_path}, line {line}: empty filepath; give the image's path or drop the row")
        if not label:
            raise DataError(f"{WHAT} {csv_path}, line {line} ({raw_path}): empty label; give a label or drop the row")
        try:
            relpath, resolved = resolve_inside(root, raw_path)
        except PathEscapeError as exc:
            raise DataError(
                f"{WHAT} {csv_path}, line {line}: filepath {raw_path!r} is not inside the CSV's folder {root} "
                f"({exc}); use paths relative to that folder without '..'"
            ) from None
        split: str | None = None
        if has_split:
            split = normalise_split(raw_split)
            if split is None:
                raise DataError(
                    f"{WHAT} {csv_path}, line {line} ({raw_path}): split {raw_split!r} is not allowed; "
                    f"use one of {', '.join(SPLITS)} (or 'valid'/'validation' for val)"
                )
        relpaths.append(relpath)
        filepaths.append(str(resolved))
        splits.append(split)
    check_unique_relpaths(relpaths, path=csv_path, what=WHAT)
    frame = pd.DataFrame({RELPATH: relpaths, FILEPATH: filepaths, SPLIT: splits, LABEL: table[LABEL].tolist()})
    for column in table.columns:
        if column not in (FILEPATH, LABEL, SPLIT):
            frame[META_PREFIX + column] = infer_meta_column(table[column]).to_numpy()
    logger.info(
        "%s %s: %d rows, meta columns %s",
        WHAT,
        csv_path,
        len(frame),
        [c for c in frame.columns if c.startswith(META_PREFIX)],
    )
    return frame
