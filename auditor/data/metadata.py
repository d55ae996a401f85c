"""The `--metadata FILE.csv` join: a `filepath` column (relative to the data root) matched to samples' relpath.

Every other column becomes `meta_<snake_case name>`. Reads only the CSV; never opens the files it names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from auditor.data.csv_manifest import check_unique_relpaths
from auditor.data.csvfiles import FIRST_DATA_LINE, infer_meta_column, read_csv_strings, require_columns
from auditor.data.paths import PathEscapeError, resolve_inside
from auditor.errors import DataError
from auditor.schema import FILEPATH, META_PREFIX, RELPATH

logger = logging.getLogger(__name__)

WHAT = "metadata file"


def load_metadata(metadata_path: Path, data_root: Path) -> pd.DataFrame:
    """The metadata table indexed by relpath, with `meta_` columns (numbers where every value is numeric).

    Raises DataError if the file is unreadable, has no `filepath` column, has an empty filepath, or lists a
    file twice. Rows whose path lies outside `data_root` are kept under a key no sample can have.
    """
    table = read_csv_strings(metadata_path, what=WHAT, keys=(FILEPATH,))
    require_columns(
        table,
        [FILEPATH],
        path=metadata_path,
        what=WHAT,
        hint="add a 'filepath' column with each image's path relative to the data root",
    )
    keys: list[str] = []
    for index, raw in enumerate(table[FILEPATH]):
        if not raw:
            raise DataError(
                f"{WHAT} {metadata_path}, line {index + FIRST_DATA_LINE}: empty filepath; fill it or drop the row"
            )
        try:
            relpath, _ = resolve_inside(data_root, raw)
        except PathEscapeError:
            relpath = f"<outside data root>/{raw}"
        keys.append(relpath)
    check_unique_relpaths(keys, path=metadata_path, what=WHAT)
    meta = pd.DataFrame(
        {META_PREFIX + c: infer_meta_column(table[c]).to_numpy() for c in table.columns if c != FILEPATH},
        index=pd.Index(keys, name=RELPATH),
    )
    return meta


def join_metadata(frame: pd.DataFrame, metadata_path: Path, data_root: Path) -> pd.DataFrame:
    """`frame` with the metadata columns appended, matched on relpath; unmatched samples get NaN.

    Raises DataError if a metadata column would overwrite a column the data source already provides.
    """
    meta = load_metadata(metadata_path, data_root)
    clashes = [c for c in meta.columns if c in frame.columns]
    if clashes:
        raise DataError(
            f"{WHAT} {metadata_path}: column(s) {', '.join(c.removeprefix(META_PREFIX) for c in clashes)} clash with "
            f"{', '.join(clashes)} from the data source; rename them in the metadata file"
        )
    unmatched = ~meta.index.isin(frame[RELPATH])
    if unmatched.any():
        logger.warning(
            "%s %s: %d of %d rows match no image (first: %s); they were ignored",
            WHAT,
            metadata_path,
            int(unmatched.sum()),
            len(meta),
            meta.index[unmatched][0],
        )
    missing = int((~frame[RELPATH].isin(meta.index)).sum())
    if missing:
        logger.warning(
            "%s %s: %d image(s) have no metadata row; their meta_ values are NaN", WHAT, metadata_path, missing
        )
    joined = meta.reindex(frame[RELPATH].to_numpy())
    for column in meta.columns:
        frame[column] = joined[column].to_numpy()
    return frame
