"""Image-folder layouts: `DATA/<class>/*` or `DATA/{train,val,test}/<class>/*` (valid/validation mean val).

Lists candidate files only; decoding happens later in `images`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from auditor.data.images import is_image_file
from auditor.data.paths import is_hidden, resolve_leniently
from auditor.data.splits import normalise_split
from auditor.errors import DataError
from auditor.schema import FILEPATH, LABEL, RELPATH, SPLIT

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [RELPATH, FILEPATH, SPLIT, LABEL]


def list_image_relpaths(root: Path) -> list[str]:
    """POSIX relpaths of every visible image file below `root` (hidden files and folders skipped), sorted."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        base = Path(folder)
        for name in filenames:
            path = base / name
            if is_image_file(path):
                found.append(path.relative_to(root).as_posix())
    return sorted(r for r in found if not is_hidden(r))


def has_split_folders(root: Path) -> bool:
    """True if a top-level folder of `root` is named like a split (train, val, valid, validation, test)."""
    return any(p.is_dir() and normalise_split(p.name) is not None for p in root.iterdir())


def scan_imagefolder(root: Path) -> pd.DataFrame:
    """Candidate rows (relpath, filepath, split, label) of an image folder; split is None in the flat layout.

    In the split layout every top-level folder holding images must be a split name; anything else is a
    DataError, because silently dropping (or training on) a folder like `extra/` would be a guess.
    """
    split_layout = has_split_folders(root)
    rows: list[dict[str, object]] = []
    loose: list[str] = []
    for relpath in list_image_relpaths(root):
        parts = relpath.split("/")
        if split_layout:
            split = normalise_split(parts[0])
            if split is None:
                raise DataError(
                    f"{root / parts[0]}: folder {parts[0]!r} is not a split, but {root} uses split folders; "
                    "top-level folders must be train, val (or valid/validation) or test: move or remove it"
                )
            if len(parts) < 3:
                loose.append(relpath)
                continue
            label = parts[1]
        else:
            split = None
            if len(parts) < 2:
                loose.append(relpath)
                continue
            label = parts[0]
        rows.append({RELPATH: relpath, FILEPATH: str(resolve_leniently(root / relpath)), SPLIT: split, LABEL: label})
    if loose:
        logger.warning("%s: ignored %d image(s) not inside a class folder (first: %s)", root, len(loose), loose[0])
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
