"""Stage `analyze`: turn scores into the final samples table, findings.json, metrics.json and analysis.json.

Reads the score tables written by the influence engine and the image files (for image properties);
writes through the store only. The estimators live in the sibling modules; this module wires them,
names the findings and metrics (ARCHITECTURE section 3) and keeps their order stable.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.clusters import ClusterFinder, compute_influence_signature, describe_clusters
from auditor.analysis.drivers import InfluenceDriverAnalysis
from auditor.analysis.duplicates import (
    DuplicateGroup,
    NearDuplicateDetector,
    find_exact_duplicates,
    group_near_duplicates,
)
from auditor.analysis.harmful import HarmfulDetector
from auditor.analysis.image_issues import ISSUE_DESCRIPTIONS, ISSUE_TYPES, ImageIssueDetector
from auditor.analysis.image_properties import (
    ASPECT_RATIO,
    COLOURFULNESS,
    CONTRAST,
    EDGE_DENSITY,
    ENTROPY,
    N_PIXELS,
    PNG_BITS_PER_PIXEL,
    load_image_properties,
)
from auditor.analysis.mislabels import (
    KNN_MAIN_NEIGHBOURS,
    LabelIssueDetector,
    combine_label_evidence,
    knn_label_posterior,
)
from auditor.analysis.neighbours import compute_nearest_neighbours, describe_neighbours
from auditor.analysis.slices import GroupPerformance, SliceScanner, SpuriousCorrelationScanner
from auditor.analysis.targets import TargetComparison, harm_target_columns
from auditor.influence.engine import SCORES_TABLE
from auditor.schema import (
    BRIGHTNESS,
    CONTENT_HASH,
    DUPLICATE_GROUP,
    ERRORS_TABLE,
    FILEPATH,
    FINDINGS_FILE,
    GIVEN_LABEL_PROB,
    HARM_SCORE,
    HEIGHT,
    IS_DUPLICATE,
    IS_HARMFUL,
    IS_LABEL_ISSUE,
    LABEL,
    LABEL_ISSUE_SCORE,
    LOSS,
    METRICS_FILE,
    PREDICTED_LABEL,
    SAMPLE_ID,
    SAMPLES_TABLE,
    SELF_INFLUENCE,
    SPLIT,
    SUGGESTED_LABEL,
    WIDTH,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

MISCLASSIFIED = "misclassified"
ANALYSIS_FILE = "analysis.json"
"""Per-analysis detail (group performance, clusters, drivers, target comparison) that report sections render."""
INFLUENCE_SIGNATURE_ARRAY = "influence_signature"

IS_NEAR_DUPLICATE = "is_near_duplicate"
NEAR_DUPLICATE_GROUP = "near_duplicate_group"
NEAR_DUPLICATE_DISTANCE = "near_duplicate_distance"
IS_IMAGE_ISSUE = "is_image_issue"
IMAGE_ISSUE_TYPES = "image_issue_types"
CLUSTER_ID = "cluster_id"
IS_UNDERPERFORMING_CLUSTER = "is_underperforming_cluster"
FLAGGED_CLUSTER_ID = "flagged_cluster_id"
INFLUENCE_CLUSTER_ID = "influence_cluster_id"

DRIVER_PROPERTIES = (
    PNG_BITS_PER_PIXEL,
    EDGE_DENSITY,
    ENTROPY,
    CONTRAST,
    BRIGHTNESS,
    COLOURFULNESS,
    N_PIXELS,
    ASPECT_RATIO,
)
"""Per-image properties the driver analysis correlates with influence (visual complexity first)."""
DRIVER_SCORES = (SELF_INFLUENCE, HARM_SCORE)
MAX_CLUSTER_FINDINGS = 10
MAX_FLAGGED_CLUSTER_FINDINGS = 5
MIN_FLAGGED_CLUSTER = 5
DRIVER_EXAMPLES = 20


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of `frame` as plain dicts (column name -> value)."""
    return [{str(key): value for key, value in record.items()} for record in frame.to_dict(orient="records")]


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:10]


def _rate_severity(rate: float, *, warn: float, critical: float) -> str:
    return "critical" if rate >= critical else "warning" if rate >= warn else "info"


@dataclass
class AnalysisResults:
    """What the estimators learned, for findings, metrics and analysis.json."""

    slices: pd.DataFrame
    slice_members: dict[str, np.ndarray]
    groups: pd.DataFrame
    correlations: pd.DataFrame
    exact_groups: list[DuplicateGroup]
    near_groups: list[DuplicateGroup] = field(default_factory=list)
    near_threshold: float | None = None
    clusters: dict[str, pd.DataFrame] = field(default_factory=dict)
    drivers: pd.DataFrame | None = None
    class_effects: pd.DataFrame | None = None
    image_issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: TargetComparison | None = None
    label_neighbours: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def score_samples(samples: pd.DataFrame, scores: pd.DataFrame, store: RunStore, classes: list[str]) -> pd.DataFrame:
    """Add the per-sample contract columns (label issues, suggestions, harm flags, duplicates)."""
    table = samples.merge(scores, on=SAMPLE_ID, how="left", validate="one_to_one")
    labels = table[LABEL].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs_in = store.read_array("probs_in").astype(np.float64)
    probs_oof = store.read_array("probs_oof").astype(np.float64)
    probs_main = store.read_array("probs_main").astype(np.float64)
    has_oof = not np.isnan(probs_oof).all()
    # Runs scored before the kNN experts existed have no knn_oof / may lack embeddings: the pool goes without.
    knn_oof = store.read_array("knn_oof").astype(np.float64) if store.has("knn_oof.npy") else None
    knn_main = None
    if store.has("embeddings.npy"):
        embeddings = store.read_array("embeddings").astype(np.float64)
        knn_main = knn_label_posterior(
            embeddings, embeddings, labels, len(classes), k=KNN_MAIN_NEIGHBOURS, exclude_self=True
        )
    # Two pools: the probabilities alone decide flags and suggestions (they are calibrated enough for the Bayes
    # rule: 362 flags at precision 0.68 on Omniglot with 10% moved labels, where adding the smoothed kNN experts
    # gives 452 at 0.56), and every expert ranks (label_issue_score; AP 0.947 -> 0.967 there).
    evidence = combine_label_evidence(probs_in, probs_oof if has_oof else None)
    ranking = combine_label_evidence(
        probs_in, probs_oof if has_oof else None, knn_oof=knn_oof if has_oof else None, knn_main=knn_main
    )
    detector = LabelIssueDetector().fit(evidence, labels, held_out=probs_oof if has_oof else None)
    names = np.asarray(classes, dtype=object)
    table[LABEL_ISSUE_SCORE] = 1.0 - ranking[np.arange(len(table)), labels]
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


def misclassified_mask(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(has an out-of-fold prediction, out-of-fold prediction differs from the label) per row."""
    has_oof = table["oof_predicted_label"].notna().to_numpy()
    differs = table["oof_predicted_label"].astype(str).to_numpy() != table[LABEL].astype(str).to_numpy()
    return has_oof, has_oof & differs


def slice_flags(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-sample flags whose concentration the slice scanner tests."""
    return {
        "label_issue": table[IS_LABEL_ISSUE].to_numpy(bool),
        MISCLASSIFIED: misclassified_mask(table)[1],
        "harmful": table[IS_HARMFUL].fillna(False).to_numpy(bool),
    }


def add_image_analysis(table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, ImageIssueDetector]:
    """Image properties and image issues as columns; returns the table, the descriptors and the issue detector."""
    properties, descriptors = load_image_properties(
        table[FILEPATH].astype(str).tolist(), table.get(WIDTH), table.get(HEIGHT)
    )
    properties.index = table.index
    table = pd.concat([table, properties], axis=1)
    detector = ImageIssueDetector().fit(table)
    table[IS_IMAGE_ISSUE] = detector.issues_["is_image_issue"].to_numpy(bool)
    table[IMAGE_ISSUE_TYPES] = detector.issues_["image_issue_types"].to_numpy(object)
    return table, descriptors, detector


def add_near_duplicates(
    table: pd.DataFrame, descriptors: np.ndarray
) -> tuple[pd.DataFrame, list[DuplicateGroup], float]:
    """Near-duplicate columns; returns the table, the near groups and the calibrated distance threshold."""
    hashes = table[CONTENT_HASH].astype(str).to_numpy() if CONTENT_HASH in table else None
    detector = NearDuplicateDetector().fit(descriptors, hashes)
    groups = group_near_duplicates(table, detector.pairs_)
    group_of = {sid: g.group_id for g in groups for sid in g.sample_ids}
    table[NEAR_DUPLICATE_GROUP] = table[SAMPLE_ID].map(group_of)
    table[IS_NEAR_DUPLICATE] = table[NEAR_DUPLICATE_GROUP].notna()
    table[NEAR_DUPLICATE_DISTANCE] = detector.nn_distance_
    return table, groups, float(detector.threshold_)


def add_clusters(
    table: pd.DataFrame, store: RunStore, classes: list[str]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Cluster columns and per-clustering description tables (all samples; flagged samples in two spaces)."""
    if not store.has("embeddings.npy"):
        return table, {}
    embeddings = store.read_array("embeddings").astype(np.float64)
    probs = store.read_array("probs_main").astype(np.float64)
    labels = table[LABEL].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    errors = misclassified_mask(table)[1]
    signature = compute_influence_signature(probs, labels, embeddings)
    store.write_array(INFLUENCE_SIGNATURE_ARRAY, signature.astype(np.float32))
    described: dict[str, pd.DataFrame] = {}

    finder = ClusterFinder().fit(embeddings)
    predicted = table[PREDICTED_LABEL].astype(str).to_numpy()
    described["embedding"] = describe_clusters(table, finder.labels_, errors, finder.reduced_, predicted=predicted)
    table[CLUSTER_ID] = _cluster_column(finder.labels_)
    bad = set(described["embedding"].loc[described["embedding"]["underperforming"], "cluster"].tolist())
    table[IS_UNDERPERFORMING_CLUSTER] = np.isin(finder.labels_, list(bad)) if bad else np.zeros(len(table), dtype=bool)

    flagged = np.flatnonzero(table[IS_LABEL_ISSUE].to_numpy(bool) | table[IS_HARMFUL].fillna(False).to_numpy(bool))
    for name, features, column in (
        ("flagged_embedding", embeddings, FLAGGED_CLUSTER_ID),
        ("flagged_influence", signature, INFLUENCE_CLUSTER_ID),
    ):
        ids = np.full(len(table), -1)
        if len(flagged) > MIN_FLAGGED_CLUSTER:
            finder = ClusterFinder(min_cluster_size=MIN_FLAGGED_CLUSTER, min_samples=3).fit(features[flagged])
            described[name] = describe_clusters(
                table,
                finder.labels_,
                errors,
                finder.reduced_,
                rows=flagged,
                predicted=predicted,
                min_support=MIN_FLAGGED_CLUSTER,
            )
            # Flagged samples are errors by construction: their clusters describe, they do not "underperform".
            described[name]["underperforming"] = False
            ids[flagged] = finder.labels_
        table[column] = _cluster_column(ids)
    return table, described


def compute_label_neighbours(table: pd.DataFrame, descriptors: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """Nearest neighbours of each likely mislabel by its pixels: do look-alikes carry its label or the suggested one?

    Pixel descriptors (the near-duplicate detector's blurred grey renditions, centred on the dataset's mean
    image), not the proxy model's embedding: that model trained on the noisy labels and places a memorised
    mislabel among its given class (on the digits demo 86% of embedding neighbours carried the wrong given
    label, 1% of pixel neighbours did).
    """
    flat = np.asarray(descriptors, dtype=np.float64).reshape(len(descriptors), -1)
    if len(flat) != len(table) or not len(flat):
        return {}
    finite = np.isfinite(flat).all(axis=1)
    if not finite.any():
        return {}
    centred = flat - flat[finite].mean(axis=0)
    rows = np.flatnonzero(table[IS_LABEL_ISSUE].to_numpy(bool))
    indices, similarities = compute_nearest_neighbours(centred, rows)
    return describe_neighbours(
        table[SAMPLE_ID].astype(str).to_numpy(), table[LABEL].astype(str).to_numpy(), rows, indices, similarities
    )


def _cluster_column(labels: np.ndarray) -> np.ndarray:
    """Cluster numbers as int64; -1 = in no cluster (HDBSCAN noise, or not clustered), as the FiftyOne push expects."""
    return np.where(np.asarray(labels) >= 0, labels, -1).astype(np.int64)


def analyse(
    table: pd.DataFrame, store: RunStore | None = None, classes: list[str] | None = None
) -> tuple[pd.DataFrame, AnalysisResults]:
    """Run every estimator on the scored table; image and cluster analyses need the store (files, embeddings)."""
    flags = slice_flags(table)
    scanner = SliceScanner().fit(table, flags)
    has_oof, errors = misclassified_mask(table)
    in_sample_correct = table[PREDICTED_LABEL].astype(str).to_numpy() == table[LABEL].astype(str).to_numpy()
    correct = np.where(has_oof, ~errors, in_sample_correct)
    loss = table[LOSS].to_numpy(dtype=float)
    if "oof_loss" in table:  # held-out loss where there is one, like `correct`
        loss = np.where(has_oof, table["oof_loss"].to_numpy(dtype=float), loss)
    results = AnalysisResults(
        slices=scanner.slices_,
        slice_members=scanner.members_,
        groups=GroupPerformance().fit(table, correct, loss).groups_,
        correlations=SpuriousCorrelationScanner().fit(table).correlations_,
        exact_groups=find_exact_duplicates(table),
        targets=TargetComparison().fit(table),
    )
    if store is not None:
        table, descriptors, issues = add_image_analysis(table)
        results.label_neighbours = compute_label_neighbours(table, descriptors)
        results.image_issues = issues.summary_
        table, results.near_groups, results.near_threshold = add_near_duplicates(table, descriptors)
        if classes is not None:
            table, results.clusters = add_clusters(table, store, classes)
        drivers = InfluenceDriverAnalysis(scores=list(DRIVER_SCORES), properties=list(DRIVER_PROPERTIES)).fit(table)
        results.drivers, results.class_effects = drivers.drivers_, drivers.class_effects_
    return table, results


def _finding(
    finding_id: str, kind: str, severity: str, title: str, sample_ids: list[str], evidence: dict[str, Any]
) -> dict[str, Any]:
    return {
        "finding_id": finding_id,
        "kind": kind,
        "severity": severity,
        "title": title,
        "sample_ids": sample_ids,
        "evidence": evidence,
        "fiftyone_view": None,
    }


def build_findings(
    table: pd.DataFrame, errors: pd.DataFrame, results: AnalysisResults | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Findings (ARCHITECTURE section 3) and the metrics rules refer to."""
    if results is None:
        table, results = analyse(table)
    n = len(table)
    findings: list[dict[str, Any]] = []
    flagged = table[table[IS_LABEL_ISSUE]].sort_values(LABEL_ISSUE_SCORE, ascending=False)
    label_rate = len(flagged) / max(n, 1)
    if len(flagged):
        findings.append(
            _finding(
                "label-issues",
                "label_issue",
                _rate_severity(label_rate, warn=0.0, critical=0.05),
                f"{len(flagged)} likely mislabeled samples ({label_rate:.1%})",
                flagged[SAMPLE_ID].tolist(),
                {
                    "method": (
                        "product of checkpoint-averaged in-sample and out-of-fold probabilities prefers another label"
                    ),
                    "suggested_labels": dict(zip(flagged[SAMPLE_ID], flagged[SUGGESTED_LABEL], strict=True)),
                },
            )
        )
    harmful = table[table[IS_HARMFUL]].sort_values(HARM_SCORE, ascending=False)
    if len(harmful):
        findings.append(
            _finding(
                "harmful",
                "harmful",
                "warning",
                f"{len(harmful)} samples predicted to raise the validation loss",
                harmful[SAMPLE_ID].tolist(),
                {"method": "TracIn influence on the mean validation loss; robust z > 3.5", "target": "val"},
            )
        )
    target_findings, target_metrics = _target_findings(table, results)
    findings += target_findings
    for group in results.exact_groups + results.near_groups:
        findings.append(duplicate_finding(group, results.near_threshold))
    slice_findings = _slice_findings(table, results)
    findings += slice_findings
    correlations = results.correlations
    for row in _rows(correlations[correlations["significant"]]):
        cells = list(row["over_represented"])
        values = sorted({c["value"] for c in cells})
        column_values = (
            table[row["column"]].astype("object").where(table[row["column"]].notna(), "(missing)").astype(str)
        )
        members = table.loc[
            column_values.isin(values) & table[LABEL].astype(str).isin({c["label"] for c in cells}), SAMPLE_ID
        ]
        findings.append(
            _finding(
                f"spurious-{_stable_id(row['column'])}",
                "spurious_correlation",
                "warning",
                f"{row['column']} depends on the label (Cramer's V {row['cramers_v']:.2f})",
                members.tolist(),
                {
                    "column": row["column"],
                    "values": values,
                    "cramers_v": float(row["cramers_v"]),
                    "p_value": float(row["p_value"]),
                    "over_represented": cells,
                },
            )
        )
    cluster_findings = _cluster_findings(results)
    findings += cluster_findings
    findings += _driver_findings(table, results)
    image_findings = _image_issue_findings(table, results)
    findings += image_findings
    if len(errors):
        findings.append(
            _finding(
                "unreadable-files",
                "image_issue",
                "warning",
                f"{len(errors)} files could not be read and were left out",
                errors[SAMPLE_ID].astype(str).tolist(),
                {"files": errors[FILEPATH].astype(str).tolist(), "errors": errors["error"].astype(str).tolist()},
            )
        )
    metrics = _metrics(
        table, errors, results, label_rate=label_rate, n_label_issues=len(flagged), n_harmful=len(harmful)
    )
    metrics["targets"] = target_metrics
    return findings, metrics


def duplicate_finding(group: DuplicateGroup, near_threshold: float | None) -> dict[str, Any]:
    kind = "leakage" if group.cross_split else "duplicate"
    what = "identical" if group.match == "exact" else "near-identical"
    evidence: dict[str, Any] = {
        "match": group.match,
        "cross_split": group.cross_split,
        "conflicting_labels": group.conflicting_labels,
        "splits": group.splits,
        "labels": group.labels,
    }
    if group.match == "near":
        evidence.update({"max_distance": group.max_distance, "distance_threshold": near_threshold})
    return _finding(
        f"dup-{group.group_id}",
        kind,
        "critical" if group.conflicting_labels or group.cross_split else "warning",
        f"{len(group.sample_ids)} {what} images"
        + (" across splits" if group.cross_split else "")
        + (" with conflicting labels" if group.conflicting_labels else ""),
        group.sample_ids,
        evidence,
    )


_FLAG_WORDS = {"label_issue": "likely mislabels", MISCLASSIFIED: "out-of-fold errors", "harmful": "harmful samples"}


def _slice_findings(table: pd.DataFrame, results: AnalysisResults) -> list[dict[str, Any]]:
    """One `slice` finding per significant (slice, flag)."""
    out = []
    ids = table[SAMPLE_ID].astype(str).to_numpy()
    for row in _rows(results.slices[results.slices["significant"]]):
        members = ids[results.slice_members[row["key"]]]
        out.append(
            _finding(
                f"slice-{_stable_id(row['flag'], row['column'], row['value'])}"
                if row["kind"] == "value"
                else f"slice-{_stable_id(row['key'])}",
                "slice",
                "warning",
                f"{row['description']}: {row['rate']:.0%} {_FLAG_WORDS.get(row['flag'], row['flag'])} "
                f"vs {row['reference_rate']:.0%}"
                + (" elsewhere" if row["kind"] == "value" else " in the comparison group"),
                members.tolist(),
                {
                    "column": row["column"],
                    "value": row["value"],
                    "slice": row["description"],
                    "slice_kind": row["kind"],
                    "conditions": row["conditions"],
                    "flag": row["flag"],
                    "n": int(row["n"]),
                    "n_flagged": int(row["n_flagged"]),
                    "rate": float(row["rate"]),
                    "rest_rate": float(row["rest_rate"]),
                    "reference_rate": float(row["reference_rate"]),
                    "lift": float(row["lift"]),
                    "p_value": float(row["p_value"]),
                    "q_value": float(row["q_value"]),
                },
            )
        )
    return out


_SPACE_WORDS = {
    "embedding": "embedding space, all samples",
    "flagged_embedding": "embedding space, flagged samples",
    "flagged_influence": "influence-signature space, flagged samples",
}


def _cluster_findings(results: AnalysisResults) -> list[dict[str, Any]]:
    """Underperforming clusters of all samples (warning), clusters of flagged samples (info)."""
    out = []
    for space, clusters in results.clusters.items():
        if space == "embedding":
            rows = clusters[clusters["underperforming"]].head(MAX_CLUSTER_FINDINGS)
        else:
            rows = clusters.sort_values(["n", "cluster"], ascending=[False, True]).head(MAX_FLAGGED_CLUSTER_FINDINGS)
        for row in _rows(rows):
            described = _describe_makeup(row["classes"], row["predicted"], row["metadata"])
            if space == "embedding":
                title = (
                    f"Underperforming cluster of {row['n']} samples ({described}): "
                    f"{row['error_rate']:.0%} errors vs {row['rest_error_rate']:.0%} elsewhere"
                )
            else:
                title = f"{row['n']} flagged samples cluster in {_SPACE_WORDS[space].split(',')[0]} ({described})"
            out.append(
                _finding(
                    f"cluster-{space}-{_stable_id(space, *row['members'])}",
                    "cluster",
                    "warning" if space == "embedding" else "info",
                    title,
                    list(row["members"]),
                    {
                        "space": _SPACE_WORDS[space],
                        "cluster": int(row["cluster"]),
                        "n": int(row["n"]),
                        "n_errors": int(row["n_errors"]),
                        "error_rate": float(row["error_rate"]),
                        "rest_error_rate": float(row["rest_error_rate"]),
                        "lift": float(row["lift"]),
                        "p_value": float(row["p_value"]),
                        "q_value": float(row["q_value"]),
                        "underperforming": bool(row["underperforming"]),
                        "classes": row["classes"],
                        "predicted": row["predicted"],
                        "metadata": row["metadata"],
                        "exemplars": row["exemplars"],
                    },
                )
            )
    return out


def _describe_makeup(
    classes: list[dict[str, Any]], predicted: list[dict[str, Any]], metadata: list[dict[str, Any]]
) -> str:
    """'labelled 3 (71%); predicted 5 (80%); meta_x=a 90%': the telling parts of a cluster's make-up."""
    parts = []
    if classes:
        parts.append(f"labelled {classes[0]['label']} ({classes[0]['share']:.0%})")
    if predicted and predicted[0]["share"] >= 0.5 and (not classes or predicted[0]["label"] != classes[0]["label"]):
        parts.append(f"predicted {predicted[0]['label']} ({predicted[0]['share']:.0%})")
    enriched = [m for m in metadata if m["share"] >= 0.5 and m["share"] >= 1.5 * m["overall_share"]]
    parts += [f"{m['column']}={m['value']} {m['share']:.0%}" for m in enriched[:2]]
    return "; ".join(parts)


def _driver_findings(table: pd.DataFrame, results: AnalysisResults) -> list[dict[str, Any]]:
    """One `driver` finding per property whose correlation with a score is clearly non-zero."""
    if results.drivers is None:
        return []
    out = []
    for row in _rows(results.drivers[results.drivers["significant"]]):
        prop = pd.to_numeric(table[row["property"]], errors="coerce")
        score = pd.to_numeric(table[row["score"]], errors="coerce")
        extreme = prop >= prop.quantile(0.9) if row["spearman"] > 0 else prop <= prop.quantile(0.1)
        examples = (
            table.loc[extreme & score.notna()].assign(_s=score).sort_values(["_s", SAMPLE_ID], ascending=[False, True])
        )
        direction = "higher" if row["spearman"] > 0 else "lower"
        out.append(
            _finding(
                f"driver-{_stable_id(row['score'], row['property'])}",
                "driver",
                "info",
                f"{row['score']} rises with {direction} {row['property']} "
                f"(Spearman {row['spearman']:+.2f}, 95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f})",
                examples[SAMPLE_ID].astype(str).head(DRIVER_EXAMPLES).tolist(),
                {
                    "score": row["score"],
                    "property": row["property"],
                    "n": int(row["n"]),
                    "spearman": float(row["spearman"]),
                    "ci_low": float(row["ci_low"]),
                    "ci_high": float(row["ci_high"]),
                    "p_value": float(row["p_value"]),
                    "within_class_spearman": float(row["within_class_spearman"]),
                    "within_class_ci_low": float(row["within_class_ci_low"]),
                    "within_class_ci_high": float(row["within_class_ci_high"]),
                    "examples": (
                        f"highest {row['score']} among the 10% of samples with the {direction}est {row['property']}"
                    ),
                },
            )
        )
    return out


def _image_issue_findings(table: pd.DataFrame, results: AnalysisResults) -> list[dict[str, Any]]:
    """One `image_issue` finding per issue type that flags samples."""
    out: list[dict[str, Any]] = []
    if IMAGE_ISSUE_TYPES not in table:
        return out
    types = table[IMAGE_ISSUE_TYPES].astype(str).str.split(",")
    for name in ISSUE_TYPES:
        members = table.loc[types.map(lambda t, name=name: name in t), SAMPLE_ID].astype(str).tolist()
        if not members:
            continue
        summary = results.image_issues.get(name, {})
        out.append(
            _finding(
                f"image-{name.replace('_', '-')}",
                "image_issue",
                "warning" if name in ("blank", "grayscale_in_colour") else "info",
                f"{len(members)} image(s) {ISSUE_DESCRIPTIONS[name]}",
                members,
                {"issue": name, "n": len(members), "rule": summary.get("rule", "")},
            )
        )
    return out


def _target_findings(table: pd.DataFrame, results: AnalysisResults) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Harmful samples per extra target and samples that matter for one target and not another; `targets` metrics."""
    comparison = results.targets
    targets = comparison.targets_ if comparison is not None else harm_target_columns(table)
    metrics: dict[str, Any] = {"count": len(targets), "rank_correlation": {"min": None, "mean": None}, "by_target": {}}
    findings: list[dict[str, Any]] = []
    for name, column in targets.items():
        detector = HarmfulDetector().fit(pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float))
        count = int(detector.is_harmful_.sum())
        metrics["by_target"][name] = {"harmful": {"count": count}, "column": column}
        if name == "val" or not count:
            continue
        flagged = (
            table.loc[detector.is_harmful_]
            .assign(_h=table[column])
            .sort_values(["_h", SAMPLE_ID], ascending=[False, True])
        )
        findings.append(
            _finding(
                f"harmful-{name}",
                "harmful",
                "warning",
                f"{count} samples predicted to raise the loss on target {name!r}",
                flagged[SAMPLE_ID].astype(str).tolist(),
                {
                    "method": "TracIn influence on the target's mean loss; robust z > 3.5",
                    "target": name,
                    "column": column,
                },
            )
        )
    if comparison is None or comparison.correlations_.empty:
        return findings, metrics
    rhos = comparison.correlations_["spearman"].dropna()
    metrics["rank_correlation"] = {
        "min": float(rhos.min()) if len(rhos) else None,
        "mean": float(rhos.mean()) if len(rhos) else None,
    }
    for row in _rows(comparison.correlations_):
        metrics["by_target"][row["second"]].setdefault("rank_correlation", {})[row["first"]] = float(row["spearman"])
        metrics["by_target"][row["first"]].setdefault("rank_correlation", {})[row["second"]] = float(row["spearman"])
    for row in _rows(comparison.specific_):
        if not row["sample_ids"]:
            continue
        findings.append(
            _finding(
                f"target-specific-{row['target']}-vs-{row['other']}",
                "target_divergence",
                "info",
                f"{len(row['sample_ids'])} of the {row['top_k']} samples most harmful to {row['target']!r} "
                f"are in the less harmful half for {row['other']!r}",
                list(row["sample_ids"]),
                {
                    "target": row["target"],
                    "other": row["other"],
                    "top_k": int(row["top_k"]),
                    "other_percentiles": list(row["other_percentiles"]),
                },
            )
        )
    return findings, metrics


def _metrics(
    table: pd.DataFrame,
    errors: pd.DataFrame,
    results: AnalysisResults,
    *,
    label_rate: float,
    n_label_issues: int,
    n_harmful: int,
) -> dict[str, Any]:
    n = len(table)
    has_oof, misclassified = misclassified_mask(table)
    accuracy = {
        split: float((part[PREDICTED_LABEL] == part[LABEL]).mean()) for split, part in table.groupby(SPLIT, sort=True)
    }
    significant = results.slices[results.slices["significant"]]
    misclassified_slices = significant[significant["flag"] == MISCLASSIFIED]
    worst_gap = (
        float((misclassified_slices["rate"] - misclassified_slices["rest_rate"]).max())
        if len(misclassified_slices)
        else 0.0
    )
    groups = results.groups
    worst_group: dict[str, Any] = {"accuracy_gap": None, "ci_low": None, "ci_high": None, "column": None, "value": None}
    if len(groups):
        top = groups.iloc[0]
        worst_group = {
            "accuracy_gap": float(top["accuracy_gap"]),
            "ci_low": float(top["accuracy_gap_ci_low"]),
            "ci_high": float(top["accuracy_gap_ci_high"]),
            "column": str(top["column"]),
            "value": str(top["value"]),
        }
    near_cross = sum(g.cross_split_pairs for g in results.near_groups)
    embedding_clusters = results.clusters.get(
        "embedding", pd.DataFrame(columns=["underperforming", "error_rate", "rest_error_rate"])
    )
    underperforming = embedding_clusters[embedding_clusters["underperforming"].astype(bool)]
    image_issue_counts = {name: {"count": int(summary["count"])} for name, summary in results.image_issues.items()}
    n_image_flagged = int(table["is_image_issue"].sum()) if "is_image_issue" in table else 0
    metrics: dict[str, Any] = {
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
            "label_issue": {
                "count": n_label_issues,
                "rate": label_rate,
                # disagreements the reliability gate held back: the model is mostly guessing at their confidence
                "held_back_unreliable": int(
                    ((table[SUGGESTED_LABEL] != table[LABEL]) & ~table[IS_LABEL_ISSUE].astype(bool)).sum()
                ),
            },
            "harmful": {"count": n_harmful, "rate": n_harmful / max(n, 1)},
            "duplicate": {
                "count": sum(len(g.sample_ids) - 1 for g in results.exact_groups),
                "groups": len(results.exact_groups),
                "conflicting_label_groups": sum(
                    g.conflicting_labels for g in results.exact_groups + results.near_groups
                ),
            },
            "near_duplicate": {
                "count": sum(len(g.sample_ids) - 1 for g in results.near_groups),
                "groups": len(results.near_groups),
                "distance_threshold": results.near_threshold,
            },
            # `count` keeps its meaning (files that could not be read); property issues are counted beside it.
            "image_issue": {
                "count": len(errors),
                "unreadable": len(errors),
                "flagged": n_image_flagged,
                **image_issue_counts,
            },
        },
        "leakage": {
            "cross_split_pairs": sum(g.cross_split_pairs for g in results.exact_groups),
            "near_cross_split_pairs": near_cross,
        },
        "slices": {
            "significant": {
                "count": len(significant),
                **{kind: int((significant["kind"] == kind).sum()) for kind in ("value", "pair", "atypical")},
            },
            "worst": {"accuracy_gap": worst_gap},
            "tested": len(results.slices),
            "groups": {"count": len(groups), "worst": worst_group},
        },
        "spurious_correlation": {
            "count": int(results.correlations["significant"].sum()),
            "max_cramers_v": float(results.correlations["cramers_v"].max()) if len(results.correlations) else None,
        },
        "clusters": {
            "count": len(embedding_clusters),
            "underperforming": {
                "count": len(underperforming),
                "worst_error_gap": float((underperforming["error_rate"] - underperforming["rest_error_rate"]).max())
                if len(underperforming)
                else 0.0,
            },
            "flagged": {"count": len(results.clusters.get("flagged_embedding", []))},
            "influence": {"count": len(results.clusters.get("flagged_influence", []))},
        },
    }
    if results.drivers is not None:
        metrics["drivers"] = _driver_metrics(results)
    return metrics


def _driver_metrics(results: AnalysisResults) -> dict[str, Any]:
    """`drivers.<property>.{spearman, ci_low, ci_high, ...}` against self-influence; `.harm.*` against harm."""
    assert results.drivers is not None
    out: dict[str, Any] = {"score": SELF_INFLUENCE}
    for row in _rows(results.drivers):
        entry = {
            "spearman": _finite(row["spearman"]),
            "ci_low": _finite(row["ci_low"]),
            "ci_high": _finite(row["ci_high"]),
            "p_value": _finite(row["p_value"]),
            "n": int(row["n"]),
            "within_class_spearman": _finite(row["within_class_spearman"]),
        }
        node = out.setdefault(row["property"], {})
        if row["score"] == SELF_INFLUENCE:
            node.update(entry)
        else:
            node["harm"] = entry
    if results.class_effects is not None:
        for row in _rows(results.class_effects):
            key = "class" if row["score"] == SELF_INFLUENCE else "class_harm"
            out[key] = {
                "eta_squared": _finite(row["eta_squared"]),
                "p_value": _finite(row["p_value"]),
                "n_classes": int(row["n_classes"]),
            }
    return out


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def build_analysis_details(table: pd.DataFrame, results: AnalysisResults) -> dict[str, Any]:
    """analysis.json: the detail tables behind the findings, for report sections (JSON-able)."""
    slices = results.slices.drop(columns=["key"]).head(200)
    details: dict[str, Any] = {
        "slices": {
            "tested": len(results.slices),
            "rows": slices.to_dict(orient="records"),
        },
        "groups": results.groups.to_dict(orient="records"),
        "spurious_correlations": results.correlations.to_dict(orient="records"),
        "near_duplicates": {"distance_threshold": results.near_threshold, "groups": len(results.near_groups)},
        "image_issues": results.image_issues,
        "clusters": {
            space: frame.drop(columns=["members"]).to_dict(orient="records")
            for space, frame in results.clusters.items()
        },
        "drivers": None if results.drivers is None else results.drivers.to_dict(orient="records"),
        "class_effects": None if results.class_effects is None else results.class_effects.to_dict(orient="records"),
        "targets": None,
        "label_neighbours": results.label_neighbours,
    }
    if results.targets is not None:
        details["targets"] = {
            "targets": results.targets.targets_,
            "correlations": results.targets.correlations_.to_dict(orient="records"),
            "specific": results.targets.specific_.to_dict(orient="records"),
        }
    return details


def run_analysis(store: RunStore, classes: list[str]) -> pd.DataFrame:
    """Write the final samples table, findings.json, metrics.json and analysis.json; return the samples table."""
    samples = store.read_table("ingest_samples")
    scores = store.read_table(SCORES_TABLE)
    errors = store.read_table(ERRORS_TABLE)
    table = score_samples(samples, scores, store, classes)
    table, results = analyse(table, store, classes)
    findings, metrics = build_findings(table, errors, results)
    store.write_table(SAMPLES_TABLE, table)
    store.write_json(FINDINGS_FILE, findings)
    store.write_json(METRICS_FILE, metrics)
    store.write_json(ANALYSIS_FILE, build_analysis_details(table, results))
    logger.info(
        "Analysis: %d label issues, %d harmful, %d significant slices, %d underperforming clusters, %d near-duplicate "
        "groups, %d findings",
        metrics["issues"]["label_issue"]["count"],
        metrics["issues"]["harmful"]["count"],
        metrics["slices"]["significant"]["count"],
        metrics["clusters"]["underperforming"]["count"],
        metrics["issues"]["near_duplicate"]["groups"],
        len(findings),
    )
    return table
