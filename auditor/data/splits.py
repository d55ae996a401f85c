"""Split names and the seeded, stratified train/val split used when a source gives no (or no val) split.

Pure functions over tables: no file I/O.
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from auditor.errors import DataError
from auditor.schema import LABEL, RELPATH, SAMPLE_ID, SPLIT, SPLITS

logger = logging.getLogger(__name__)

# Spellings of split names accepted in folder names and manifest values (case-insensitive).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def normalise_split(value: str) -> str | None:
    """The canonical split ('train', 'val', 'test') for `value`, or None if it is not a known spelling."""
    return SPLIT_ALIASES.get(value.strip().lower())


def _shuffle_key(seed: int, sample_id: str) -> str:
    """Per-sample pseudo-random key: a sample's place depends only on (seed, sample_id), not on other files."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def compute_stratified_split(frame: pd.DataFrame, *, seed: int, val_fraction: float) -> pd.Series:
    """Assign 'train'/'val' per row, stratified by label, seeded and stable.

    Within each class, rows are ordered by sha256(seed:sample_id) and the first round(n * val_fraction) go to
    val, clamped to [1, n - 1] so every class with >= 2 rows has at least one row in train and one in val.
    A class with a single row stays in train. Adding a file to one class never moves files of another.
    """
    split = pd.Series("train", index=frame.index, dtype="object")
    for _, group in frame.groupby(LABEL, sort=True):
        n = len(group)
        if n < 2:
            continue
        n_val = min(max(round(n * val_fraction), 1), n - 1)
        keys = group[SAMPLE_ID].map(lambda sid: _shuffle_key(seed, sid))
        val_index = keys.sort_values(kind="stable").index[:n_val]
        split.loc[val_index] = "val"
    return split


def resolve_splits(frame: pd.DataFrame, *, seed: int, val_fraction: float, source: str) -> pd.Series:
    """Final split per row: the source's splits if it has any, else a new stratified train/val split.

    With source splits: values must be train/val/test (already normalised), there must be train rows, and if
    there are no val rows, val is carved out of train with `compute_stratified_split` (test is kept as is).
    """
    given = frame[SPLIT]
    if given.isna().all():
        logger.info(
            "%s gives no splits: made a stratified train/val split (val_fraction=%s, seed=%s)",
            source,
            val_fraction,
            seed,
        )
        return compute_stratified_split(frame, seed=seed, val_fraction=val_fraction)
    missing = given.isna()
    if missing.any():
        first = frame.loc[missing, RELPATH].iloc[0]
        raise DataError(
            f"{source}: {int(missing.sum())} file(s) have no split (first: {first}) while others do; "
            f"give every file one of {', '.join(SPLITS)} or none at all"
        )
    bad = ~given.isin(SPLITS)
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise DataError(
            f"{source}: split {row[SPLIT]!r} of {row[RELPATH]} is not allowed; use one of {', '.join(SPLITS)}"
        )
    if not (given == "train").any():
        raise DataError(
            f"{source}: has splits {sorted(set(given))} but no 'train' rows; add training images "
            "or drop the splits to let auditor make a stratified train/val split"
        )
    unseen = sorted(set(frame.loc[given != "train", LABEL]) - set(frame.loc[given == "train", LABEL]))
    if unseen:
        logger.warning("%s: %d class(es) have no train images (first: %s)", source, len(unseen), unseen[0])
    if (given == "val").any():
        return given.astype("object")
    train = frame.loc[given == "train"]
    carved = compute_stratified_split(train, seed=seed, val_fraction=val_fraction)
    logger.info(
        "%s has no 'val' split: moved %d of %d train files to val (stratified, seed=%s)",
        source,
        int((carved == "val").sum()),
        len(train),
        seed,
    )
    result = given.astype("object").copy()
    result.loc[carved.index] = carved
    return result
