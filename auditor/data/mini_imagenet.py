"""Mini-ImageNet layout: `DATA/images/*.jpg` plus `{train,val,test}.csv` with header `filename,label`.

Its splits are class-disjoint (few-shot), so all rows are pooled for a classification audit: the original split
is kept as `meta_original_split` and the caller makes a new stratified split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from auditor.data.csvfiles import FIRST_DATA_LINE, read_csv_strings, require_columns
from auditor.data.imagefolder import CANDIDATE_COLUMNS, list_image_relpaths
from auditor.data.paths import PathEscapeError, resolve_inside, resolve_leniently
from auditor.errors import DataError
from auditor.schema import FILEPATH, LABEL, META_PREFIX, RELPATH, SPLIT, SPLITS

logger = logging.getLogger(__name__)

IMAGES_FOLDER = "images"
META_ORIGINAL_SPLIT = META_PREFIX + "original_split"
WHAT = "mini-ImageNet split file"


def looks_like_mini_imagenet(root: Path) -> bool:
    """True if `root` holds an `images/` folder and a `train.csv`."""
    return (root / IMAGES_FOLDER).is_dir() and (root / "train.csv").is_file()


def scan_mini_imagenet(root: Path) -> pd.DataFrame:
    """Candidate rows (relpath 'images/<filename>', filepath, split=None, label, meta_original_split)."""
    images = resolve_leniently(root / IMAGES_FOLDER)
    if not images.is_dir() or not (root / "train.csv").is_file():
        raise DataError(
            f"{root}: not a mini-ImageNet folder (expected images/ and train.csv[, val.csv, test.csv] with header "
            "'filename,label'); pass another --format"
        )
    rows: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file():
            continue
        table = read_csv_strings(csv_path, what=WHAT, keys=("filename", LABEL))
        require_columns(
            table,
            ["filename", LABEL],
            path=csv_path,
            what=WHAT,
            hint="mini-ImageNet split files have the header 'filename,label'",
        )
        for index, (filename, label) in enumerate(zip(table["filename"], table[LABEL], strict=True)):
            where = f"{csv_path}, line {index + FIRST_DATA_LINE}"
            if not filename or not label:
                raise DataError(f"{WHAT} {where}: empty filename or label; fill it in or drop the row")
            try:
                inner, resolved = resolve_inside(images, filename)
            except PathEscapeError as exc:
                raise DataError(
                    f"{WHAT} {where}: filename {filename!r} is not inside {images} ({exc}); use bare file names"
                ) from None
            relpath = f"{IMAGES_FOLDER}/{inner}"
            if relpath in seen:
                raise DataError(f"{WHAT} {where}: {filename} is already listed at {seen[relpath]}; keep one row")
            seen[relpath] = where
            rows.append(
                {RELPATH: relpath, FILEPATH: str(resolved), SPLIT: None, LABEL: label, META_ORIGINAL_SPLIT: split}
            )
    unlisted = [r for r in list_image_relpaths(images) if f"{IMAGES_FOLDER}/{r}" not in seen]
    if unlisted:
        logger.warning(
            "%s: %d image(s) are in no split file and were ignored (first: %s)", images, len(unlisted), unlisted[0]
        )
    return pd.DataFrame(rows, columns=[*CANDIDATE_COLUMNS, META_ORIGINAL_SPLIT])
