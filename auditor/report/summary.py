"""Headline numbers of a run, shared by the HTML summary strip, summary.md and audit.json `statistics`.

Prefers metrics.json; falls back to counting the samples table so a partly finished run still summarises.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from auditor.gate.verdict import count_statuses
from auditor.report.tables import NOT_EVALUATED, SEVERITIES, AuditTables, to_plain
from auditor.schema import IS_DUPLICATE, IS_HARMFUL, IS_LABEL_ISSUE, LABEL, SPLIT

_VERDICTS = {
    NOT_EVALUATED: ("Not evaluated", "neutral"),
    "pass": ("Pass", "ok"),
    "passed": ("Pass", "ok"),
    "warn": ("Warnings", "warn"),
    "warning": ("Warnings", "warn"),
    "fail": ("Fail", "bad"),
    "failed": ("Fail", "bad"),
    "error": ("Error", "bad"),
}


def describe_verdict(verdict: str) -> dict[str, str]:
    """`{value, label, tone}` of a gate verdict; tone is one of ok, warn, bad, neutral."""
    label, tone = _VERDICTS.get(verdict.lower(), (verdict.replace("_", " ").capitalize(), "neutral"))
    return {"value": verdict, "label": label, "tone": tone}


def compute_statistics(tables: AuditTables) -> dict[str, Any]:
    """Counts describing the run: samples per split, findings per severity and kind, flagged samples."""
    samples = tables.samples
    findings = tables.findings
    kinds = sorted({f["kind"] for f in findings})
    return to_plain(
        {
            "n_samples": _first(tables.metric("dataset.n_samples"), len(samples)),
            "n_classes": _first(tables.metric("dataset.n_classes"), samples[LABEL].nunique()),
            "n_errors": _first(tables.metric("dataset.n_errors"), len(tables.errors)),
            "samples_by_split": {str(k): int(v) for k, v in sorted(samples[SPLIT].astype(str).value_counts().items())},
            "n_findings": len(findings),
            "findings_by_severity": {s: sum(f["severity"] == s for f in findings) for s in SEVERITIES},
            "findings_by_kind": {k: sum(f["kind"] == k for f in findings) for k in kinds},
            "n_label_issues": _first(tables.metric("issues.label_issue.count"), _count_true(samples, IS_LABEL_ISSUE)),
            "n_harmful": _first(tables.metric("issues.harmful.count"), _count_true(samples, IS_HARMFUL)),
            "n_duplicates": _first(tables.metric("issues.duplicate.count"), _count_true(samples, IS_DUPLICATE)),
            "cross_split_pairs": tables.metric("leakage.cross_split_pairs"),
            "n_near_duplicates": tables.metric("issues.near_duplicate.count"),
            "near_cross_split_pairs": tables.metric("leakage.near_cross_split_pairs"),
            "n_significant_slices": _first(
                tables.metric("slices.significant.count"),
                sum(f["kind"] == "slice" for f in findings) if findings else None,
            ),
            "n_rules": len(tables.results),
            "rules_by_status": count_statuses(tables.results),
        }
    )


def compute_key_numbers(tables: AuditTables) -> list[dict[str, Any]]:
    """The summary strip: `[{key, label, value, display, detail, tone}]`; `display` is already text."""
    stats = compute_statistics(tables)
    n_samples = stats["n_samples"] or 0
    label_rate = tables.metric("issues.label_issue.rate")
    if label_rate is None and stats["n_label_issues"] is not None and n_samples:
        label_rate = stats["n_label_issues"] / n_samples
    accuracy = tables.metric("model.accuracy.val")
    numbers = [
        _number("n_samples", "Samples", stats["n_samples"], f"{len(stats['samples_by_split'])} split(s)", "neutral"),
        _number("n_classes", "Classes", stats["n_classes"], None, "neutral"),
        _number("n_label_issues", "Label issues", stats["n_label_issues"], _percent(label_rate, "of samples"), "warn"),
        _number("n_harmful", "Harmful samples", stats["n_harmful"], None, "warn"),
        _number(
            "n_duplicates", "Duplicates", stats["n_duplicates"], _near(stats["n_near_duplicates"], "exact"), "warn"
        ),
        _number(
            "cross_split_pairs",
            "Leakage pairs",
            stats["cross_split_pairs"],
            _near(stats["near_cross_split_pairs"], "exact, across splits"),
            "bad",
        ),
        _number("n_significant_slices", "Biased slices", stats["n_significant_slices"], "significant", "warn"),
        _number("n_errors", "Unreadable files", stats["n_errors"], None, "warn"),
    ]
    near = {"n_duplicates": stats["n_near_duplicates"], "cross_split_pairs": stats["near_cross_split_pairs"]}
    for number in numbers:  # near-identical images alone still deserve attention
        if number["tone"] == "neutral" and isinstance(near.get(number["key"]), int) and near[number["key"]] > 0:
            number["tone"] = "warn"
    numbers.append(
        {
            "key": "val_accuracy",
            "label": "Proxy accuracy",
            "value": to_plain(accuracy),
            "display": f"{accuracy:.1%}" if isinstance(accuracy, int | float) else "—",
            "detail": "validation split",
            "tone": "neutral",
        }
    )
    return numbers


def _near(near_count: Any, exact_detail: str) -> str:
    """Card detail that keeps near-identical images visible beside the exact count."""
    if isinstance(near_count, int) and near_count > 0:
        return f"{exact_detail}; +{near_count:,} near-identical"
    return exact_detail


def _number(key: str, label: str, value: Any, detail: str | None, tone_if_nonzero: str) -> dict[str, Any]:
    value = to_plain(value)
    display = f"{value:,}" if isinstance(value, int) else ("—" if value is None else f"{value:.3g}")
    tone = tone_if_nonzero if isinstance(value, int | float) and value > 0 else "neutral"
    return {"key": key, "label": label, "value": value, "display": display, "detail": detail, "tone": tone}


def _percent(rate: Any, suffix: str) -> str | None:
    rate = to_plain(rate)
    return f"{rate:.1%} {suffix}" if isinstance(rate, int | float) else None


def _first(value: Any, fallback: Any) -> Any:
    return to_plain(value) if to_plain(value) is not None else to_plain(fallback)


def _count_true(samples: pd.DataFrame, column: str) -> int | None:
    return int(samples[column].fillna(False).astype(bool).sum()) if column in samples else None
