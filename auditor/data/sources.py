"""Entry point of the ingest stage: any supported layout -> (samples table, errors table).

Picks the layout, lists files, joins --metadata, probes every image, validates classes and splits.
Writes nothing except an extracted zip in the run's scratch folder; the caller stores the tables.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd

from auditor.config import AuditConfig
from auditor.data.csv_manifest import scan_csv_manifest
from auditor.data.demo import METADATA_FILE as DEMO_METADATA_FILE
from auditor.data.detect import LAYOUTS_HELP, detect_format
from auditor.data.imagefolder import scan_imagefolder
from auditor.data.images import probe_images
from auditor.data.metadata import join_metadata
from auditor.data.mini_imagenet import scan_mini_imagenet
from auditor.data.omniglot import extract_zip, scan_omniglot
from auditor.data.paths import resolve_leniently
from auditor.data.splits import resolve_splits
from auditor.errors import DataError, has_control_characters
from auditor.schema import (
    BRIGHTNESS,
    CONTENT_HASH,
    ERRORS_COLUMNS,
    FILE_BYTES,
    FILEPATH,
    HEIGHT,
    LABEL,
    MODE,
    RELPATH,
    SAMPLE_ID,
    SAMPLES_REQUIRED,
    SAMPLES_TABLE,
    SPLIT,
    WIDTH,
    meta_columns,
    validate_table,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

IMAGE_PROPERTY_COLUMNS = [WIDTH, HEIGHT, MODE, FILE_BYTES, CONTENT_HASH, BRIGHTNESS]
INGEST_STAGE = "ingest"


def compute_sample_id(relpath: str) -> str:
    """Stable sample id: the first 16 hex characters of sha1(relpath)."""
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:16]


def resolve_format(data_path: Path, requested: str) -> str:
    """The concrete layout: 'demo' reads as an image folder, 'auto' is detected from the files."""
    if requested == "demo":
        return "imagefolder"
    if requested == "auto":
        detected = detect_format(data_path)
        logger.info("Detected layout %s for %s", detected, data_path)
        return detected
    return requested


def resolve_metadata_path(config: AuditConfig, data_root: Path) -> Path | None:
    """`--metadata` resolved; for `--format demo` without it, the demo's own metadata.csv if present."""
    if config.metadata:
        return resolve_leniently(Path(config.metadata).expanduser())
    if config.format == "demo" and (data_root / DEMO_METADATA_FILE).is_file():
        return data_root / DEMO_METADATA_FILE
    return None


def scan_source(data_path: Path, layout: str, store: RunStore) -> tuple[pd.DataFrame, Path]:
    """Candidate rows (relpath, filepath, split, label, meta_*) of `data_path` and the root relpaths refer to."""
    if layout == "csv":
        if not data_path.is_file():
            raise DataError(f"{data_path}: --format csv needs a .csv manifest file, got a folder")
        return scan_csv_manifest(data_path), data_path.parent
    if layout == "omniglot" and data_path.is_file():
        if data_path.suffix.lower() != ".zip":
            raise DataError(f"{data_path}: --format omniglot needs a folder or a .zip archive")
        root = extract_zip(data_path, store.scratch_dir("data"))
        return scan_omniglot(root), root
    if not data_path.is_dir():
        raise DataError(f"{data_path}: --format {layout} needs a folder, got a file; check DATA or --format")
    if layout == "omniglot":
        return scan_omniglot(data_path), data_path
    if layout == "mini-imagenet":
        return scan_mini_imagenet(data_path), data_path
    if layout == "imagefolder":
        return scan_imagefolder(data_path), data_path
    raise DataError(f"unknown --format {layout!r}; use auto, imagefolder, csv, omniglot, mini-imagenet or demo")


def check_class_sizes(samples: pd.DataFrame, source: str) -> None:
    """DataError naming the class and its file if any class has a single readable image, or if there is one class.

    One class is refused rather than warned about: every label-issue, harm and slice score would be meaningless,
    and the usual cause is DATA pointing one folder too deep (at a class, not at the dataset).
    """
    counts = samples[LABEL].value_counts()
    singles = sorted(counts.index[counts < 2])
    if singles:
        label = singles[0]
        relpath = samples.loc[samples[LABEL] == label, RELPATH].iloc[0]
        others = f" (and {len(singles) - 1} more class(es))" if len(singles) > 1 else ""
        raise DataError(
            f"{source}: class {label!r} has a single readable image ({relpath}){others}; every class needs at "
            "least 2 (one for train, one for val): add images to it or remove the class"
        )
    if len(counts) < 2:
        raise DataError(
            f"{source}: every readable image has the label {counts.index[0]!r}; a classification audit needs at "
            "least two classes: point DATA at the folder holding the class folders, or add a class"
        )


def check_labels_printable(candidates: pd.DataFrame, source: str) -> None:
    """DataError naming the file if a label holds a control, line-break or bidi-override character.

    Labels are shown in terminals, HTML, Markdown and JUnit XML; a line break splits CI log lines and XML 1.0
    cannot hold most control characters, and a bidi override makes a label display as something else.
    """
    bad = candidates[LABEL].astype(str).map(has_control_characters)
    if bad.any():
        row = candidates.loc[bad].iloc[0]
        raise DataError(
            f"{source}: label {row[LABEL]!r} of {row[RELPATH]!r} contains a control, line-break or bidi-override "
            f"character ({int(bad.sum())} file(s) affected); rename the class without it"
        )


def load_samples(config: AuditConfig, store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the dataset named by `config` into (samples, errors) tables.

    samples: one row per readable image, sorted by relpath, columns sample_id, filepath, relpath, split,
    label, meta_*..., width, height, mode, file_bytes, content_hash, brightness.
    errors: one row per unreadable image (sample_id, filepath, stage='ingest', error).
    Raises DataError for input the audit cannot use (missing path, unknown layout, bad manifest, a class
    with a single image, no readable images, bad splits).
    """
    data_path = resolve_leniently(Path(config.data).expanduser())
    if not data_path.exists():
        raise DataError(f"data path {config.data!r} ({data_path}) does not exist; check the path")
    layout = resolve_format(data_path, config.format)
    source = f"{layout} dataset {data_path}"
    candidates, data_root = scan_source(data_path, layout, store)
    if candidates.empty:
        raise DataError(f"{source}: no images found; expected {LAYOUTS_HELP}")
    check_labels_printable(candidates, source)
    candidates = candidates.sort_values(RELPATH, kind="stable").reset_index(drop=True)
    candidates.insert(0, SAMPLE_ID, candidates[RELPATH].map(compute_sample_id))
    if candidates[SAMPLE_ID].duplicated().any():
        clash = candidates.loc[candidates[SAMPLE_ID].duplicated(keep=False), RELPATH].tolist()
        raise DataError(f"{source}: files {clash[:2]} get the same sample_id; rename one of them")
    metadata_path = resolve_metadata_path(config, data_root)
    if metadata_path is not None:
        candidates = join_metadata(candidates, metadata_path, data_root)

    properties, failures = probe_images(list(dict.fromkeys(candidates[FILEPATH])))
    failed = candidates[FILEPATH].isin(list(failures))
    errors = pd.DataFrame(
        {
            SAMPLE_ID: candidates.loc[failed, SAMPLE_ID].to_numpy(),
            FILEPATH: candidates.loc[failed, FILEPATH].to_numpy(),
            "stage": INGEST_STAGE,
            "error": [failures[f] for f in candidates.loc[failed, FILEPATH]],
        },
        columns=list(ERRORS_COLUMNS),
    ).astype(str)
    if len(errors):
        logger.warning(
            "%s: %d unreadable image(s) recorded in the errors table (first: %s)",
            source,
            len(errors),
            errors["error"].iloc[0],
        )
    readable = candidates.loc[~failed]
    if readable.empty:
        raise DataError(
            f"{source}: none of the {len(candidates)} image(s) could be read (first: {errors['error'].iloc[0]})"
        )
    samples = readable.merge(properties, on=FILEPATH, how="left", validate="many_to_one")
    check_class_sizes(samples, source)
    samples[SPLIT] = resolve_splits(samples, seed=config.seed, val_fraction=config.val_fraction, source=source)
    columns = [SAMPLE_ID, FILEPATH, RELPATH, SPLIT, LABEL, *meta_columns(samples), *IMAGE_PROPERTY_COLUMNS]
    text_columns = [SAMPLE_ID, FILEPATH, RELPATH, SPLIT, LABEL, MODE, CONTENT_HASH]
    samples = samples[columns].astype(dict.fromkeys(text_columns, str)).reset_index(drop=True)
    validate_table(samples, SAMPLES_REQUIRED, name=SAMPLES_TABLE)
    logger.info(
        "%s: %d samples, %d classes, splits %s, %d unreadable",
        source,
        len(samples),
        samples[LABEL].nunique(),
        samples[SPLIT].value_counts().to_dict(),
        len(errors),
    )
    return samples, errors
