"""Omniglot layout: `<Alphabet>/characterNN/<IIII>_<DD>.png`, optionally below one top-level folder or in the
official zip, which is extracted once into the run's scratch folder (zip-slip and zip-bomb guarded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import stat
import zipfile
from pathlib import Path

import pandas as pd

from auditor.data.imagefolder import CANDIDATE_COLUMNS, list_image_relpaths
from auditor.data.paths import is_hidden, resolve_leniently, to_posix
from auditor.errors import DataError
from auditor.schema import FILEPATH, LABEL, META_PREFIX, RELPATH, SPLIT

logger = logging.getLogger(__name__)

CHARACTER_FOLDER = re.compile(r"^character\d+$")
DRAWING_FILE = re.compile(r"^(\d+)_(\d+)\.png$", re.IGNORECASE)
META_ALPHABET = META_PREFIX + "alphabet"
META_DRAWER = META_PREFIX + "drawer"

# Refuse archives that would expand beyond this (the official Omniglot zips expand to < 20 MB).
MAX_EXTRACTED_BYTES = 4 * 1024**3
_MARKER = ".auditor-extracted.json"


def parse_omniglot_relpath(relpath: str) -> tuple[str, str, int | None] | None:
    """(alphabet, characterNN, drawer or None) for `[top/]<Alphabet>/characterNN/<file>`, else None."""
    parts = relpath.split("/")
    if len(parts) not in (3, 4) or not CHARACTER_FOLDER.match(parts[-2]):
        return None
    match = DRAWING_FILE.match(parts[-1])
    return parts[-3], parts[-2], int(match.group(2)) if match else None


def looks_like_omniglot(relpaths: list[str]) -> bool:
    """True if any image relpath follows the `[top/]<Alphabet>/characterNN/<IIII>_<DD>.png` pattern."""
    return any((parsed := parse_omniglot_relpath(r)) is not None and parsed[2] is not None for r in relpaths)


def scan_omniglot(root: Path) -> pd.DataFrame:
    """Candidate rows (relpath, filepath, split=None, label, meta_alphabet, meta_drawer) below `root`.

    label is `<Alphabet>/characterNN`; meta_drawer is the DD of `IIII_DD.png` (NaN if the name differs).
    Images outside the pattern are skipped with a warning.
    """
    rows: list[dict[str, object]] = []
    skipped: list[str] = []
    for relpath in list_image_relpaths(root):
        parsed = parse_omniglot_relpath(relpath)
        if parsed is None:
            skipped.append(relpath)
            continue
        alphabet, character, drawer = parsed
        rows.append(
            {
                RELPATH: relpath,
                FILEPATH: str(resolve_leniently(root / relpath)),
                SPLIT: None,
                LABEL: f"{alphabet}/{character}",
                META_ALPHABET: alphabet,
                META_DRAWER: drawer,
            }
        )
    if skipped:
        logger.warning(
            "%s: skipped %d image(s) outside <Alphabet>/characterNN/ (first: %s)", root, len(skipped), skipped[0]
        )
    frame = pd.DataFrame(rows, columns=[*CANDIDATE_COLUMNS, META_ALPHABET, META_DRAWER])
    if frame[META_DRAWER].notna().all():
        frame[META_DRAWER] = frame[META_DRAWER].astype("int64")
    else:
        frame[META_DRAWER] = frame[META_DRAWER].astype("float64")
    return frame


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_member_path(zip_path: Path, name: str) -> str | None:
    """The member's POSIX path if it is a regular, visible file; DataError if it would escape the target."""
    posix = to_posix(name)
    parts = posix.split("/")
    if posix.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
        raise DataError(
            f"{zip_path}: member {name!r} would be written outside the extraction folder (zip-slip); "
            "the archive is unsafe, re-create it with relative paths"
        )
    if not posix or is_hidden(posix):
        return None
    return posix


def extract_zip(zip_path: Path, scratch: Path) -> Path:
    """Extract `zip_path` into `scratch/<zip stem>/` once and return that folder.

    A marker file holding the zip's sha256 makes re-runs skip extraction; a changed zip is extracted again.
    Members with absolute paths or '..' raise DataError (zip-slip); links and hidden files are skipped.
    """
    target = scratch / zip_path.stem
    marker = target / _MARKER
    zip_hash = _file_sha256(zip_path)
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("zip_sha256")
        except (OSError, ValueError):
            recorded = None
        if recorded == zip_hash:
            logger.info("Using %s, already extracted from %s", target, zip_path)
            return target
    partial = scratch / f".{zip_path.stem}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            total = sum(info.file_size for info in members)
            if total > MAX_EXTRACTED_BYTES:
                raise DataError(
                    f"{zip_path} would expand to {total / 1024**3:.1f} GiB, over the {MAX_EXTRACTED_BYTES // 1024**3} "
                    "GiB limit; extract it yourself and pass the folder"
                )
            n_files = 0
            for info in members:
                posix = _safe_member_path(zip_path, info.filename)
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                if posix is None or info.is_dir() or is_link:
                    continue
                destination = partial / posix
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                n_files += 1
    except zipfile.BadZipFile as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{zip_path} is not a valid zip archive ({exc}); re-download or re-create it") from None
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / _MARKER).write_text(json.dumps({"zip_sha256": zip_hash, "n_files": n_files}), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("Extracted %d files from %s into %s", n_files, zip_path, target)
    return target
