"""Table names, column names and the score-direction convention shared by every stage.

Score direction: for every `*_score` column, higher = more concerning.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from auditor.errors import DataError

# Table names inside the run directory (see ARCHITECTURE.md section 3).
SAMPLES_TABLE = "samples"
ERRORS_TABLE = "errors"
FINDINGS_FILE = "findings.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
GATE_FILE = "gate.json"  # the last rule-gate outcome (verdict, per-rule results), re-rendered by every report

# Samples table: identity and data.
SAMPLE_ID = "sample_id"
FILEPATH = "filepath"
RELPATH = "relpath"
SPLIT = "split"
LABEL = "label"
META_PREFIX = "meta_"

# Image properties recorded at ingest.
WIDTH = "width"
HEIGHT = "height"
MODE = "mode"
FILE_BYTES = "file_bytes"
CONTENT_HASH = "content_hash"
BRIGHTNESS = "brightness"

# Scores (the user-facing contract).
LOSS = "loss"
SELF_INFLUENCE = "self_influence"
LABEL_ISSUE_SCORE = "label_issue_score"
IS_LABEL_ISSUE = "is_label_issue"
SUGGESTED_LABEL = "suggested_label"
HARM_SCORE = "harm_score"
PREDICTED_LABEL = "predicted_label"
GIVEN_LABEL_PROB = "given_label_prob"
IS_HARMFUL = "is_harmful"
IS_DUPLICATE = "is_duplicate"
DUPLICATE_GROUP = "duplicate_group"

SPLITS = ("train", "val", "test")

SAMPLES_REQUIRED = (SAMPLE_ID, FILEPATH, SPLIT, LABEL)
SCORE_COLUMNS = (
    LOSS,
    SELF_INFLUENCE,
    LABEL_ISSUE_SCORE,
    IS_LABEL_ISSUE,
    SUGGESTED_LABEL,
    HARM_SCORE,
)
ERRORS_COLUMNS = (SAMPLE_ID, FILEPATH, "stage", "error")


def meta_columns(frame: pd.DataFrame) -> list[str]:
    """Return the metadata columns (`meta_*`) of a samples table, in table order."""
    return [c for c in frame.columns if c.startswith(META_PREFIX)]


def validate_table(frame: pd.DataFrame, required: Iterable[str], *, name: str) -> None:
    """Raise DataError naming the table and the missing columns if `frame` lacks any of `required`."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"table {name!r} lacks column(s) {missing}; present: {list(frame.columns)}")
    if SAMPLE_ID in frame.columns and SAMPLE_ID in required and frame[SAMPLE_ID].duplicated().any():
        dup = frame.loc[frame[SAMPLE_ID].duplicated(), SAMPLE_ID].iloc[0]
        raise DataError(f"table {name!r} has duplicate sample_id {dup!r}; sample ids must be unique")
