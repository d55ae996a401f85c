"""Stage `fewshot`: in few-shot mode, replaces train, score and analyze with one episodic audit.

Loads the ingested images as the train stage does (same size rule, so Omniglot becomes 28x28), runs
`run_fewshot_audit`, and writes what the report stage reads: task_scores.parquet, the final samples table
(contract columns kept), findings.json, metrics.json (dotted few-shot metrics nested) and analysis.json
(the most harmful tasks, for the report's few-shot section). Classification-only analyses (slices,
clusters, drivers, image properties) are not run; their sections then show nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.duplicates import find_exact_duplicates
from auditor.analysis.harmful import HarmfulDetector
from auditor.config import AuditConfig
from auditor.errors import ConfigError, DataError
from auditor.fewshot.influence import InfluenceSettings
from auditor.fewshot.label_issues import LabelIssueGate, gate_label_issues
from auditor.fewshot.run import FewShotOptions, FewShotResult, run_fewshot_audit
from auditor.fewshot.training import MetaTrainSettings
from auditor.schema import (
    DUPLICATE_GROUP,
    ERRORS_TABLE,
    FINDINGS_FILE,
    HARM_SCORE,
    IS_DUPLICATE,
    IS_HARMFUL,
    IS_LABEL_ISSUE,
    LABEL,
    LABEL_ISSUE_SCORE,
    METRICS_FILE,
    SAMPLE_ID,
    SAMPLES_TABLE,
    SUGGESTED_LABEL,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

TASK_SCORES_TABLE = "task_scores"
ANALYSIS_FILE = "analysis.json"
MAX_HARMFUL_TASKS = 10
"""Most harmful tasks kept for the finding and the report (each task is ways x (shots + queries) images)."""
VAL_SHARE = 0.2
"""Default share of classes in each of the validation and test pools (as FewShotOptions.class_fractions)."""


def class_fractions(n_classes: int, ways: int) -> tuple[float, float, float]:
    """Train/val/test class shares: 60/20/20, but each pool gets at least `ways` classes, since every task of
    a pool draws `ways` distinct classes from it. Exact ratios of counts, so `split_classes` rounds back to them."""
    if n_classes < 3 * ways:
        raise ConfigError(
            f"--ways {ways} needs at least {3 * ways} classes ({ways} in each of the train, validation and test "
            f"class pools); the data has {n_classes}"
        )
    n_val = max(round(VAL_SHARE * n_classes), ways)
    n_test = n_val
    n_train = n_classes - n_val - n_test
    return n_train / n_classes, n_val / n_classes, n_test / n_classes


def fewshot_options(config: AuditConfig, n_classes: int) -> FewShotOptions:
    """Options from the config: `tasks` meta-training tasks, a quarter as many validation and half as many test
    tasks (at least 2 each), `meta_steps` Adam steps with the run's seed."""
    return FewShotOptions(
        n_train_tasks=config.tasks,
        n_val_tasks=max(2, config.tasks // 4),
        n_test_tasks=max(2, config.tasks // 2),
        class_fractions=class_fractions(n_classes, config.ways),
        train=MetaTrainSettings(steps=config.meta_steps, seed=config.seed),
        influence=InfluenceSettings(
            relative_damping=0.1,
            curvature="gauss_newton",
            max_iter=30,
            tolerance=1e-4,
            hessian_tasks=min(32, config.tasks),
        ),
    )


def load_fewshot_pixels(store: RunStore, config: AuditConfig, samples: pd.DataFrame) -> np.ndarray:
    """Float pixels [n, C, S, S] in [0, 1], written once as the train stage writes them (same size rule).
    Omniglot is inverted so strokes, not the white page, carry the signal (the usual Omniglot preprocessing)."""
    from auditor.data.images import default_image_size, infer_channels, load_pixels
    from auditor.models.fitting import class_index
    from auditor.pipeline import CLASSES_FILE, PIXELS_ARRAY

    if not store.has(f"{PIXELS_ARRAY}.npy"):
        channels = infer_channels(samples)
        size = config.image_size or default_image_size(samples, channels)
        store.write_array(PIXELS_ARRAY, load_pixels(samples, size, channels))
        store.write_json(CLASSES_FILE, class_index(samples))
    pixels = store.read_array(PIXELS_ARRAY).astype(np.float32) / 255.0
    return 1.0 - pixels if config.format == "omniglot" else pixels


def check_class_sizes(samples: pd.DataFrame, shots: int, queries: int) -> None:
    """Every class must fill one task's support and query sets."""
    sizes = samples[LABEL].astype(str).value_counts()
    small = sizes[sizes < shots + queries]
    if len(small):
        raise DataError(
            f"--shots {shots} + --queries {queries} needs {shots + queries} images per class; {len(small)} class(es) "
            f"have fewer (e.g. {small.index[0]!r} has {int(small.iloc[0])})"
        )


def robust_outliers(scores: np.ndarray) -> np.ndarray:
    """Positive scores with a modified z-score (median/MAD) above 3.5; NaN (unscored) is never flagged."""
    return HarmfulDetector().fit(scores).is_harmful_


def label_issue_flags(table: pd.DataFrame) -> tuple[np.ndarray, LabelIssueGate]:
    """Outliers of the leave-one-out prototype loss (robust z > 3.5), kept if their nearest leave-one-out
    prototype is another class and the embedding passes the reliability gate (auditor.fewshot.label_issues)."""
    # On the unbounded loss: the [0, 1] score bunches near 1, where a robust z-score loses its spread.
    loss = table["label_issue_loss"].to_numpy(dtype=float)
    return gate_label_issues(
        robust_outliers(loss),
        table[LABEL].astype(str).to_numpy(),
        table[SUGGESTED_LABEL].astype(str).to_numpy(),
        np.isfinite(loss),
    )


def build_samples_table(samples: pd.DataFrame, result: FewShotResult) -> pd.DataFrame:
    """Ingest samples plus the instance scores and the samples contract columns."""
    scores = result.sample_scores.drop(columns=[LABEL])
    table = samples.merge(scores, on=SAMPLE_ID, how="left", validate="one_to_one")
    flags, gate = label_issue_flags(table)
    if not gate.reliable:
        logger.warning(
            "No label issues flagged: the meta-learned embedding's leave-one-out prototype accuracy %.3f is below "
            "%.2f, too weak to tell a mislabelled image from a hard one (train longer: more meta-steps)",
            gate.loo_accuracy,
            gate.min_loo_accuracy,
        )
    table[IS_LABEL_ISSUE] = flags
    table[IS_HARMFUL] = robust_outliers(table[HARM_SCORE].to_numpy(dtype=float))
    group_of = {sid: g.group_id for g in find_exact_duplicates(table) for sid in g.sample_ids}
    table[DUPLICATE_GROUP] = table[SAMPLE_ID].map(group_of)
    table[IS_DUPLICATE] = table[DUPLICATE_GROUP].notna()
    return table


def top_tasks(task_scores: pd.DataFrame, k: int = MAX_HARMFUL_TASKS) -> pd.DataFrame:
    """The k highest-scoring tasks with a positive score (removing them is predicted to lower the val loss)."""
    positive = task_scores[task_scores["score"] > 0]
    return positive.sort_values(["score", "task_id"], ascending=[False, True], kind="mergesort").head(k)


def nest_metrics(flat: dict[str, float]) -> dict[str, Any]:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = float(value)
    return nested


def _finding(finding_id: str, kind: str, severity: str, title: str, ids: list[str], evidence: dict[str, Any]) -> Any:
    return {
        "finding_id": finding_id,
        "kind": kind,
        "severity": severity,
        "title": title,
        "sample_ids": ids,
        "evidence": evidence,
        "fiftyone_view": None,
    }


def build_findings(table: pd.DataFrame, tasks: pd.DataFrame, config: AuditConfig) -> list[dict[str, Any]]:
    """Most harmful tasks (their member samples), then label-issue and harmful samples."""
    findings: list[dict[str, Any]] = []
    shape = f"{config.ways}-way {config.shots}-shot"
    if len(tasks):
        records = task_records(tasks)
        members = list(dict.fromkeys(sid for row in records for sid in [*row["support_ids"], *row["query_ids"]]))
        findings.append(
            _finding(
                "harmful-tasks",
                "harmful_task",
                "warning",
                f"{len(tasks)} {shape} meta-training task(s) predicted to raise the validation-task loss most",
                members,
                {
                    "method": (
                        f"task influence on the {config.learner} validation-task loss (damped inverse HVP), "
                        "averaged over the meta-training checkpoints"
                    ),
                    "task_ids": tasks["task_id"].astype(str).tolist(),
                    "scores": [float(s) for s in tasks["score"]],
                },
            )
        )
    for column, flag, kind, what, method in (
        (
            LABEL_ISSUE_SCORE,
            IS_LABEL_ISSUE,
            "label_issue",
            "likely mislabelled (far from its class once left out of its prototype)",
            "leave-one-out prototype loss in the meta-learned embedding; label_issue_loss robust z > 3.5 and the "
            "nearest leave-one-out prototype another class (none if its accuracy is below the reliability gate)",
        ),
        (
            HARM_SCORE,
            IS_HARMFUL,
            "harmful",
            "predicted to raise the validation-task loss",
            "instance influence in few-shot tasks; harm_score robust z > 3.5",
        ),
    ):
        flagged = table[table[flag]].sort_values([column, SAMPLE_ID], ascending=[False, True])
        if len(flagged):
            findings.append(
                _finding(
                    kind,
                    kind,
                    "warning",
                    f"{len(flagged)} image(s) {what}",
                    flagged[SAMPLE_ID].astype(str).tolist(),
                    {"method": method, "column": column},
                )
            )
    return findings


def build_metrics(table: pd.DataFrame, errors: pd.DataFrame, result: FewShotResult, config: AuditConfig) -> Any:
    """The metrics the report and rules read (dataset, issues) plus the nested few-shot metrics."""
    n = len(table)
    n_label, n_harmful = int(table[IS_LABEL_ISSUE].sum()), int(table[IS_HARMFUL].sum())
    groups = table[DUPLICATE_GROUP].dropna()
    metrics: dict[str, Any] = {
        "dataset": {
            "n_samples": n,
            "n_classes": int(table[LABEL].nunique()),
            "n_errors": len(errors),
            "split_counts": {str(k): int(v) for k, v in table["split"].value_counts().sort_index().items()},
        },
        "issues": {
            "label_issue": {"count": n_label, "rate": n_label / max(n, 1)},
            "harmful": {"count": n_harmful, "rate": n_harmful / max(n, 1)},
            "duplicate": {"count": int(len(groups) - groups.nunique()), "groups": int(groups.nunique())},
            "image_issue": {"count": len(errors), "unreadable": len(errors)},
        },
        **nest_metrics(result.metrics),
    }
    metrics["fewshot"].update(
        {
            "ways": config.ways,
            "shots": config.shots,
            "queries": config.queries,
            "n_scored_samples": int(table[HARM_SCORE].notna().sum()),
        }
    )
    _, gate = label_issue_flags(table)
    metrics["fewshot"]["label_issue"] = {
        "loo_accuracy": gate.loo_accuracy,
        "min_loo_accuracy": gate.min_loo_accuracy,
        "reliable": float(gate.reliable),
    }
    return metrics


def task_records(tasks: pd.DataFrame) -> list[dict[str, Any]]:
    """Tasks as JSON-able dicts: task_id, score, classes, support_ids, query_ids."""
    rows = [{str(k): v for k, v in row.items()} for row in tasks.to_dict(orient="records")]
    return [
        {
            "task_id": str(row["task_id"]),
            "score": float(row["score"]),
            "classes": [str(c) for c in row["classes"]],
            "support_ids": [str(s) for s in row["support_ids"]],
            "query_ids": [str(s) for s in row["query_ids"]],
        }
        for row in rows
    ]


def run_fewshot_stage(store: RunStore, config: AuditConfig) -> pd.DataFrame:
    """Run the few-shot audit on the ingested samples and write its outputs; return the samples table."""
    from auditor.pipeline import INGEST_TABLE

    samples = store.read_table(INGEST_TABLE)
    n_classes = int(samples[LABEL].nunique())
    options = fewshot_options(config, n_classes)  # a too-large --ways fails before any image is decoded
    check_class_sizes(samples, config.shots, config.queries)
    pixels = load_fewshot_pixels(store, config, samples)
    result = run_fewshot_audit(
        samples,
        pixels,
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        learner=config.learner,
        seed=config.seed,
        verify=config.verify,
        options=options,
    )
    errors = store.read_table(ERRORS_TABLE)
    table = build_samples_table(samples, result)
    harmful_tasks = top_tasks(result.task_scores)
    metrics = build_metrics(table, errors, result, config)
    store.write_table(TASK_SCORES_TABLE, result.task_scores)
    store.write_table(SAMPLES_TABLE, table)
    store.write_json(FINDINGS_FILE, build_findings(table, harmful_tasks, config))
    store.write_json(METRICS_FILE, metrics)
    store.write_json(
        ANALYSIS_FILE,
        {
            "fewshot": {
                "learner": config.learner,
                "ways": config.ways,
                "shots": config.shots,
                "queries": config.queries,
                "n_tasks": len(result.task_scores),
                "top_tasks": task_records(harmful_tasks),
            }
        },
    )
    logger.info(
        "Few-shot audit: %d-way %d-shot accuracy %.3f, %d harmful tasks, %d label issues, %d harmful images",
        config.ways,
        config.shots,
        result.metrics["fewshot.accuracy"],
        len(harmful_tasks),
        metrics["issues"]["label_issue"]["count"],
        metrics["issues"]["harmful"]["count"],
    )
    return table
