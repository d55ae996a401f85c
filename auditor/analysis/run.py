"""Stage `analyze`: turn scores into the final samples table, findings.json and metrics.json.

Reads the score tables written by the influence engine; writes through the store only.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.duplicates import find_exact_duplicates
from auditor.analysis.harmful import HarmfulDetector
from auditor.analysis.mislabels import LabelIssueDetector, combine_label_evidence
from auditor.analysis.slices import SliceScanner, SpuriousCorrelationScanner
from auditor.influence.engine import SCORES_TABLE
from auditor.schema import (
    DUPLICATE_GROUP,
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
    METRICS_FILE,
    PREDICTED_LABEL,
    SAMPLE_ID,
    SAMPLES_TABLE,
    SPLIT,
    SUGGESTED_LABEL,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

MISCLASSIFIED = "misclassified"


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:10]


def _rate_severity(rate: float, *, warn: float, critical: float) -> str:
    return "critical" if rate >= critical else "warning" if rate >= warn else "info"


def score_samples(samples: pd.DataFrame, scores: pd.DataFrame, store: RunStore, classes: list[str]) -> pd.DataFrame:
    """Add the per-sample contract columns (label issues, suggestions, harm flags, duplicates)."""
    table = samples.merge(scores, on=SAMPLE_ID, how="left", validate="one_to_one")
    labels = table[LABEL].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs_in = store.read_array("probs_in").astype(np.float64)
    probs_oof = store.read_array("probs_oof").astype(np.float64)
    probs_main = store.read_array("probs_main").astype(np.float64)
    evidence = combine_label_evidence(probs_in, None if np.isnan(probs_oof).all() else probs_oof)
    detector = LabelIssueDetector().fit(evidence, labels)
    names = np.asarray(classes, dtype=object)
    table[LABEL_ISSUE_SCORE] = detector.label_issue_score_
    table[IS_LABEL_ISSUE] = detector.is_label_issue_
    table[SUGGESTED_LABEL] = names[detector.suggested_label_]
    table[GIVEN_LABEL_PROB] = evidence[np.arange(len(table)), labels]
    table[PREDICTED_LABEL] = names[probs_main.argmax(1)]
    oof_pred = np.where(np.isnan(probs_oof).any(1), -1, np.nan_to_num(probs_oof).argmax(1))
    table["oof_predicted_label"] = [names[i] if i >= 0 else None for i in oof_pred]
    table[IS_HARMFUL] = HarmfulDetector().fit(table[HARM_SCORE].to_numpy(dtype=float)).is_harmful_
    groups = find_exact_duplicates(table)
    group_of = {sid: g.group_id for g in groups for sid in g.sample_ids}
    table[DUPLICATE_GROUP] = table[SAMPLE_ID].map(group_of)
    table[IS_DUPLICATE] = table[DUPLICATE_GROUP].notna()
    return table


def build_findings(table: pd.DataFrame, errors: pd.DataFrame) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Findings (ARCHITECTURE section 3) and the metrics rules refer to."""
    n = len(table)
    findings: list[dict[str, Any]] = []
    flagged = table[table[IS_LABEL_ISSUE]].sort_values(LABEL_ISSUE_SCORE, ascending=False)
    label_rate = len(flagged) / max(n, 1)
    if len(flagged):
        findings.append(
            {
                "finding_id": "label-issues",
                "kind": "label_issue",
                "severity": _rate_severity(label_rate, warn=0.0, critical=0.05),
                "title": f"{len(flagged)} likely mislabeled samples ({label_rate:.1%})",
                "sample_ids": flagged[SAMPLE_ID].tolist(),
                "evidence": {
                    "method": "product of checkpoint-averaged in-sample and out-of-fold probabilities prefers another label",
                    "suggested_labels": dict(zip(flagged[SAMPLE_ID], flagged[SUGGESTED_LABEL], strict=True)),
                },
                "fiftyone_view": None,
            }
        )
    harmful = table[table[IS_HARMFUL]].sort_values(HARM_SCORE, ascending=False)
    if len(harmful):
        findings.append(
            {
                "finding_id": "harmful",
                "kind": "harmful",
                "severity": "warning",
                "title": f"{len(harmful)} samples predicted to raise the validation loss",
                "sample_ids": harmful[SAMPLE_ID].tolist(),
                "evidence": {"method": "TracIn influence on the mean validation loss; robust z > 3.5"},
                "fiftyone_view": None,
            }
        )
    groups = find_exact_duplicates(table)
    for group in groups:
        kind = "leakage" if group.cross_split else "duplicate"
        findings.append(
            {
                "finding_id": f"dup-{group.group_id}",
                "kind": kind,
                "severity": "critical" if group.conflicting_labels or group.cross_split else "warning",
                "title": f"{len(group.sample_ids)} identical images"
                + (" across splits" if group.cross_split else "")
                + (" with conflicting labels" if group.conflicting_labels else ""),
                "sample_ids": group.sample_ids,
                "evidence": {
                    "match": "exact",
                    "cross_split": group.cross_split,
                    "conflicting_labels": group.conflicting_labels,
                    "splits": group.splits,
                    "labels": group.labels,
                },
                "fiftyone_view": None,
            }
        )
    has_oof = table["oof_predicted_label"].notna().to_numpy()
    misclassified = has_oof & (table["oof_predicted_label"].astype(str).to_numpy() != table[LABEL].astype(str).to_numpy())
    flags = {"label_issue": table[IS_LABEL_ISSUE].to_numpy(bool), MISCLASSIFIED: misclassified}
    slices = SliceScanner().fit(table, flags).slices_
    significant = slices[slices["significant"]]
    for row in significant.itertuples(index=False):
        sample_ids = table.loc[table[row.column].astype("object").where(table[row.column].notna(), "(missing)").astype(str) == row.value, SAMPLE_ID]
        what = "likely mislabels" if row.flag == "label_issue" else "out-of-fold errors"
        findings.append(
            {
                "finding_id": f"slice-{_stable_id(row.flag, row.column, row.value)}",
                "kind": "slice",
                "severity": "warning",
                "title": f"{row.column}={row.value}: {row.rate:.0%} {what} vs {row.rest_rate:.0%} elsewhere",
                "sample_ids": sample_ids.tolist(),
                "evidence": {
                    "column": row.column,
                    "value": row.value,
                    "flag": row.flag,
                    "n": int(row.n),
                    "n_flagged": int(row.n_flagged),
                    "rate": float(row.rate),
                    "rest_rate": float(row.rest_rate),
                    "lift": float(row.lift),
                    "p_value": float(row.p_value),
                    "q_value": float(row.q_value),
                },
                "fiftyone_view": None,
            }
        )
    correlations = SpuriousCorrelationScanner().fit(table).correlations_
    for row in correlations[correlations["significant"]].itertuples(index=False):
        cells = list(row.over_represented)
        values = sorted({c["value"] for c in cells})
        column_values = table[row.column].astype("object").where(table[row.column].notna(), "(missing)").astype(str)
        members = table.loc[
            column_values.isin(values) & table[LABEL].astype(str).isin({c["label"] for c in cells}), SAMPLE_ID
        ]
        findings.append(
            {
                "finding_id": f"spurious-{_stable_id(row.column)}",
                "kind": "spurious_correlation",
                "severity": "warning",
                "title": f"{row.column} depends on the label (Cramer's V {row.cramers_v:.2f})",
                "sample_ids": members.tolist(),
                "evidence": {
                    "column": row.column,
                    "values": values,
                    "cramers_v": float(row.cramers_v),
                    "p_value": float(row.p_value),
                    "over_represented": cells,
                },
                "fiftyone_view": None,
            }
        )
    if len(errors):
        findings.append(
            {
                "finding_id": "unreadable-files",
                "kind": "image_issue",
                "severity": "warning",
                "title": f"{len(errors)} files could not be read and were left out",
                "sample_ids": errors[SAMPLE_ID].astype(str).tolist(),
                "evidence": {"files": errors[FILEPATH].astype(str).tolist(), "errors": errors["error"].astype(str).tolist()},
                "fiftyone_view": None,
            }
        )
    accuracy = {
        split: float((part[PREDICTED_LABEL] == part[LABEL]).mean()) for split, part in table.groupby(SPLIT, sort=True)
    }
    misclassified_slices = significant[significant["flag"] == MISCLASSIFIED]
    worst_gap = float((misclassified_slices["rate"] - misclassified_slices["rest_rate"]).max()) if len(misclassified_slices) else 0.0
    dup_extra = sum(len(g.sample_ids) - 1 for g in groups)
    metrics = {
        "dataset": {
            "n_samples": n,
            "n_classes": int(table[LABEL].nunique()),
            "n_errors": len(errors),
            "split_counts": {str(k): int(v) for k, v in table[SPLIT].value_counts().sort_index().items()},
        },
        "model": {
            "accuracy": accuracy,
            "oof_accuracy": float(1 - misclassified[has_oof].mean()) if has_oof.any() else None,
        },
        "issues": {
            "label_issue": {"count": int(len(flagged)), "rate": label_rate},
            "harmful": {"count": int(len(harmful)), "rate": len(harmful) / max(n, 1)},
            "duplicate": {"count": dup_extra, "groups": len(groups)},
            "image_issue": {"count": len(errors)},
        },
        "leakage": {"cross_split_pairs": sum(g.cross_split_pairs for g in groups)},
        "slices": {"significant": {"count": int(len(significant))}, "worst": {"accuracy_gap": worst_gap}},
        "spurious_correlation": {"count": int(correlations["significant"].sum())},
    }
    return findings, metrics


def run_analysis(store: RunStore, classes: list[str]) -> pd.DataFrame:
    """Write the final samples table, findings.json and metrics.json; return the samples table."""
    samples = store.read_table("ingest_samples")
    scores = store.read_table(SCORES_TABLE)
    errors = store.read_table(ERRORS_TABLE)
    table = score_samples(samples, scores, store, classes)
    findings, metrics = build_findings(table, errors)
    store.write_table(SAMPLES_TABLE, table)
    store.write_json(FINDINGS_FILE, findings)
    store.write_json(METRICS_FILE, metrics)
    logger.info(
        "Analysis: %d label issues, %d harmful, %d findings",
        metrics["issues"]["label_issue"]["count"],
        metrics["issues"]["harmful"]["count"],
        len(findings),
    )
    return table
