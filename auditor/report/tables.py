"""AuditTables: everything a report reads from a run directory, loaded once through the RunStore.

Owns loading and light normalisation (missing optional files become empty); it renders nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from auditor.errors import DataError
from auditor.schema import (
    ERRORS_COLUMNS,
    ERRORS_TABLE,
    FINDINGS_FILE,
    GATE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SAMPLES_REQUIRED,
    SAMPLES_TABLE,
    validate_table,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

DEMO_CHECK_FILE = "demo_check.json"
ANALYSIS_FILE = "analysis.json"
"""Detail tables of the analysis stage (group performance, clusters, drivers, targets) for report sections."""

NOT_EVALUATED = "not_evaluated"
"""Verdict of a run the rule gate has not judged yet."""

SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True, kw_only=True)
class AuditTables:
    """The inputs of every report: run tables plus the gate's verdict and per-rule results."""

    manifest: dict[str, Any]
    samples: pd.DataFrame
    errors: pd.DataFrame
    findings: list[dict[str, Any]]
    metrics: dict[str, Any]
    demo_check: dict[str, Any] | None = None
    analysis: dict[str, Any] = field(default_factory=dict)
    verdict: str = NOT_EVALUATED
    results: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, dotted: str, default: Any = None) -> Any:
        """Value at a dotted path of metrics.json (e.g. `issues.label_issue.count`), else `default`."""
        node: Any = self.metrics
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def load_audit_tables(
    store: RunStore,
    *,
    verdict: str = NOT_EVALUATED,
    results: Sequence[Mapping[str, Any]] | None = None,
) -> AuditTables:
    """Read manifest, samples, errors, findings, metrics and the demo check of the run in `store`.

    Only the manifest and samples.parquet are required; the other files are optional so that a report
    can be drawn from a run whose later stages have not finished. Without an explicit verdict/results,
    the run's last gate outcome (gate.json, written by `auditor check` or `audit --rules`) is used.
    """
    if not store.exists():
        raise DataError(
            f"{store.root} is not an auditor run (no {MANIFEST_FILE}); pass the run directory written by "
            "`auditor audit`"
        )
    if not store.has_table(SAMPLES_TABLE):
        raise DataError(
            f"run {store.root} has no {SAMPLES_TABLE}.parquet; run `auditor audit` on it before drawing a report"
        )
    samples = store.read_table(SAMPLES_TABLE)
    validate_table(samples, SAMPLES_REQUIRED, name=SAMPLES_TABLE)
    if store.has_table(ERRORS_TABLE):
        errors = store.read_table(ERRORS_TABLE)
    else:
        errors = pd.DataFrame({column: pd.Series(dtype=object) for column in ERRORS_COLUMNS})
    findings = store.read_json(FINDINGS_FILE) if store.has(FINDINGS_FILE) else []
    if not isinstance(findings, list):
        raise DataError(f"{store.path(FINDINGS_FILE)} must hold a JSON list of findings; got {type(findings).__name__}")
    metrics = store.read_json(METRICS_FILE) if store.has(METRICS_FILE) else {}
    demo_check = store.read_json(DEMO_CHECK_FILE) if store.has(DEMO_CHECK_FILE) else None
    analysis = store.read_json(ANALYSIS_FILE) if store.has(ANALYSIS_FILE) else {}
    if verdict == NOT_EVALUATED and results is None and store.has(GATE_FILE):
        gate = store.read_json(GATE_FILE)
        if not isinstance(gate, dict) or not isinstance(gate.get("results"), list) or "verdict" not in gate:
            raise DataError(f"{store.path(GATE_FILE)} is not a gate outcome; delete it or rerun `auditor check`")
        verdict, results = str(gate["verdict"]), gate["results"]
    return AuditTables(
        manifest=store.read_manifest(),
        samples=samples,
        errors=errors,
        findings=[_normalise_finding(f, i) for i, f in enumerate(findings)],
        metrics=metrics if isinstance(metrics, dict) else {},
        demo_check=demo_check if isinstance(demo_check, dict) else None,
        analysis=analysis if isinstance(analysis, dict) else {},
        verdict=verdict,
        results=[dict(r) for r in results or ()],
    )


def _normalise_finding(raw: Any, position: int) -> dict[str, Any]:
    """A finding with every contract key present, so templates never meet a missing field."""
    if not isinstance(raw, dict):
        raise DataError(f"{FINDINGS_FILE} entry {position} must be an object; got {type(raw).__name__}")
    severity = str(raw.get("severity") or "info")
    sample_ids = raw.get("sample_ids") or []
    evidence = raw.get("evidence") or {}
    return {
        "finding_id": str(raw.get("finding_id") or f"finding-{position}"),
        "kind": str(raw.get("kind") or "unknown"),
        "severity": severity if severity in SEVERITIES else "info",
        "title": str(raw.get("title") or ""),
        "sample_ids": [str(s) for s in sample_ids] if isinstance(sample_ids, list) else [],
        "evidence": evidence if isinstance(evidence, dict) else {},
        "fiftyone_view": raw.get("fiftyone_view"),
    }


def to_plain(value: Any) -> Any:
    """Turn numpy/pandas scalars into Python ones and NaN/NA into None, so section data is JSON-able."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
