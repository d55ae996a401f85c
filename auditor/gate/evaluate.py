"""Evaluate rules against one run: resolve dotted metric paths, compute per-group metrics, compare with a baseline.

Returns plain result dicts (one per rule, the audit.json `results` contract); reads the run only through the
GateInputs it is given and writes nothing. Waivers are applied by waivers.py, the verdict by verdict.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from auditor.errors import DataError
from auditor.gate.conditions import ConditionError, check_condition, describe_condition, format_value, is_number
from auditor.gate.spec import FOR_EACH_CLASS, FOR_EACH_METADATA, FOR_EACH_SLICES, Rule, RulePack
from auditor.gate.waivers import apply_waiver
from auditor.schema import (
    FINDINGS_FILE,
    HARM_SCORE,
    IS_HARMFUL,
    IS_LABEL_ISSUE,
    LABEL,
    LABEL_ISSUE_SCORE,
    METRICS_FILE,
    PREDICTED_LABEL,
    SAMPLE_ID,
    SAMPLES_TABLE,
    SPLIT,
)
from auditor.store import RunStore

MAX_EVIDENCE = 25
"""Sample ids listed as evidence per rule (most telling first)."""

OOF_PREDICTED_LABEL = "oof_predicted_label"
MISSING_VALUE = "(missing)"
TRAIN_SPLIT = "train"

STATUS_PASS, STATUS_FAIL, STATUS_ERROR, STATUS_SKIPPED = "pass", "fail", "error", "skipped"

_EVIDENCE_KINDS = {
    "issues.label_issue": ("label_issue",),
    "issues.harmful": ("harmful",),
    "issues.duplicate": ("duplicate", "leakage"),
    "issues.image_issue": ("image_issue",),
    "leakage": ("leakage",),
    "slices": ("slice",),
    "spurious_correlation": ("spurious_correlation",),
}


class MetricError(LookupError):
    """A metric cannot be resolved or computed for this run; the message says why and what exists."""


class GateInputs:
    """What rules read from a run: metrics, findings and (loaded on first use) the samples table."""

    def __init__(
        self,
        metrics: Mapping[str, Any],
        findings: Sequence[Mapping[str, Any]],
        load_samples: Callable[[], pd.DataFrame],
    ) -> None:
        self.metrics = metrics
        self.findings = findings
        self._load_samples = load_samples

    @classmethod
    def from_store(cls, store: RunStore) -> GateInputs:
        """The inputs of an analysed run; DataError when the run has no metrics.json yet."""
        if not store.exists():
            raise DataError(f"{store.root} is not an auditor run directory (no manifest.json)")
        if not store.has(METRICS_FILE):
            raise DataError(f"run {store.root} has no {METRICS_FILE}; finish `auditor audit` on it before a gate check")
        metrics = store.read_json(METRICS_FILE)
        findings = store.read_json(FINDINGS_FILE) if store.has(FINDINGS_FILE) else []
        if not isinstance(metrics, dict) or not isinstance(findings, list):
            raise DataError(f"run {store.root}: {METRICS_FILE} must hold an object and {FINDINGS_FILE} a list")
        return cls(metrics, findings, lambda: store.read_table(SAMPLES_TABLE))

    @classmethod
    def from_tables(
        cls, metrics: Mapping[str, Any], findings: Sequence[Mapping[str, Any]], samples: pd.DataFrame
    ) -> GateInputs:
        """Inputs from tables already in memory."""
        return cls(metrics, findings, lambda: samples)

    @cached_property
    def samples(self) -> pd.DataFrame:
        """samples.parquet, read once when a for_each class/metadata rule needs it."""
        return self._load_samples()


def resolve_metric(metrics: Mapping[str, Any], dotted: str) -> Any:
    """The leaf value at `dotted` in `metrics`; MetricError naming what exists when the path is wrong."""
    node: Any = metrics
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise MetricError(f"metric {dotted!r} not found: {'.'.join(walked)!r} is a value, not a group")
        if part not in node:
            here = ".".join(walked) or "the top level"
            known = ", ".join(sorted(map(str, node))) or "nothing"
            raise MetricError(f"metric {dotted!r} not found: no {part!r} under {here} (available: {known})")
        node = node[part]
        walked.append(part)
    if isinstance(node, Mapping):
        leaves = ", ".join(f"{dotted}.{k}" for k in sorted(map(str, node)))
        raise MetricError(f"metric {dotted!r} is a group of metrics; name one of its values: {leaves}")
    if node is None:
        raise MetricError(f"metric {dotted!r} is null: this run did not compute it")
    if not isinstance(node, int | float | str | bool):
        raise MetricError(f"metric {dotted!r} holds a {type(node).__name__}, not a number, text or boolean")
    return node


def evaluate_pack(
    pack: RulePack,
    inputs: GateInputs,
    *,
    today: date,
    baseline: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One result per rule, in pack order, with waivers applied (see waivers.py)."""
    return [
        apply_waiver(evaluate_rule(rule, inputs, baseline=baseline), pack.waivers.get(rule.id), today)
        for rule in pack.rules
    ]


def evaluate_rule(rule: Rule, inputs: GateInputs, *, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The result of one rule before waivers: status pass, fail, error or skipped, with its evidence."""
    try:
        if rule.for_each is not None:
            return _evaluate_groups(rule, inputs)
        if rule.baseline_change is not None:
            return _evaluate_baseline(rule, inputs, baseline)
        return _evaluate_value(rule, inputs)
    except (MetricError, ConditionError) as exc:
        return make_result(rule, status=STATUS_ERROR, observed=None, message=str(exc))


def make_result(
    rule: Rule,
    *,
    status: str,
    observed: Any,
    message: str,
    groups: list[dict[str, Any]] | None = None,
    evidence: Sequence[str] = (),
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A rule result with every contract key present (null where it does not apply)."""
    grouped = rule.for_each is not None
    return {
        "rule_id": rule.id,
        "metric": rule.metric,
        "condition": rule.condition,
        "threshold": rule.threshold,
        "severity": rule.severity,
        "status": status,
        "observed": observed,
        "message": message,
        "waiver": None,
        "expired_waiver": False,
        "for_each": rule.for_each,
        "mostly": rule.mostly if grouped else None,
        "min_support": rule.min_support if grouped else None,
        "groups": groups if grouped else None,
        "baseline": baseline,
        "evidence_sample_ids": list(evidence)[:MAX_EVIDENCE],
        "description": rule.description,
        "owner": rule.owner,
    }


# -- plain and baseline rules ----------------------------------------------------------------------


def _evaluate_value(rule: Rule, inputs: GateInputs) -> dict[str, Any]:
    observed = resolve_metric(inputs.metrics, rule.metric)
    passed = check_condition(rule.condition, observed, rule.threshold)
    required = describe_condition(rule.condition, rule.threshold)
    message = f"{rule.metric} = {format_value(observed)}" + (
        f" (required {required})" if passed else f", required {required}"
    )
    return make_result(
        rule,
        status=STATUS_PASS if passed else STATUS_FAIL,
        observed=observed,
        message=message,
        evidence=_finding_evidence(rule.metric, inputs.findings),
    )


def _evaluate_baseline(rule: Rule, inputs: GateInputs, baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    if baseline is None:
        return make_result(
            rule,
            status=STATUS_SKIPPED,
            observed=None,
            message=f"compares {rule.metric} with a baseline; none given (pass --baseline OLD/audit.json)",
        )
    current = resolve_metric(inputs.metrics, rule.metric)
    try:
        before = resolve_metric(baseline, rule.metric)
    except MetricError as exc:
        raise MetricError(f"baseline: {exc}") from exc
    if not (is_number(current) and is_number(before)):
        raise MetricError(
            f"{rule.metric} must be a number in both runs to compare (now {current!r}, before {before!r})"
        )
    change = compute_change(float(before), float(current), rule.baseline_change or "absolute")
    passed = check_condition(rule.condition, change, rule.threshold)
    unit = "relative change" if rule.baseline_change == "relative" else "change"
    shown = "unbounded (baseline was 0)" if math.isinf(change) else format_value(change)
    message = (
        f"{rule.metric} {format_value(before)} -> {format_value(current)}: {unit} {shown}"
        + (" (required " if passed else ", required ")
        + describe_condition(rule.condition, rule.threshold)
        + (")" if passed else "")
    )
    return make_result(
        rule,
        status=STATUS_PASS if passed else STATUS_FAIL,
        observed=change,
        message=message,
        evidence=_finding_evidence(rule.metric, inputs.findings),
        baseline={"change": rule.baseline_change, "baseline_value": before, "current_value": current},
    )


def compute_change(before: float, current: float, change: str) -> float:
    """current - before (absolute) or (current - before) / |before| (relative; +-inf when before is 0)."""
    delta = current - before
    if change == "absolute":
        return delta
    if before == 0:
        return 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return delta / abs(before)


def _finding_evidence(metric: str, findings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sample ids of the findings behind a metric (e.g. leakage.* -> leakage groups), in findings order."""
    kinds: tuple[str, ...] = ()
    for prefix, mapped in _EVIDENCE_KINDS.items():
        if metric == prefix or metric.startswith(prefix + "."):
            kinds = mapped
    ids: dict[str, None] = {}
    for finding in findings:
        if finding.get("kind") in kinds:
            for sample_id in finding.get("sample_ids") or []:
                ids.setdefault(str(sample_id), None)
                if len(ids) >= MAX_EVIDENCE:
                    return list(ids)
    return list(ids)


# -- for_each rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupValue:
    """A per-group metric: its value (None when undefined), the samples behind it, and evidence ids."""

    group: str
    value: float | None
    support: int
    evidence: list[str]
    note: str = ""


def _evaluate_groups(rule: Rule, inputs: GateInputs) -> dict[str, Any]:
    if rule.for_each == FOR_EACH_SLICES:
        values = compute_slice_metrics(inputs.findings, rule.metric)
        noun = "slices"
    elif rule.for_each == FOR_EACH_METADATA:
        from auditor.analysis.slices import categorical_meta_columns  # scipy: only when a rule needs it

        samples = inputs.samples
        values = [
            replace(item, group=f"{column}={item.group}")
            for column in categorical_meta_columns(samples)
            for item in compute_group_metrics(samples, column, rule.metric)
        ]
        noun = "metadata values"
    else:
        column = LABEL if rule.for_each == FOR_EACH_CLASS else str(rule.for_each)
        values = compute_group_metrics(inputs.samples, column, rule.metric)
        noun = "classes" if rule.for_each == FOR_EACH_CLASS else f"{rule.for_each} values"
    groups: list[dict[str, Any]] = []
    failing: list[GroupValue] = []
    for item in values:
        entry = {"group": item.group, "observed": item.value, "support": item.support, "status": STATUS_SKIPPED}
        if item.value is None:
            entry["note"] = item.note or "metric undefined for this group"
        elif item.support < rule.min_support:
            entry["note"] = f"support {item.support} < min_support {rule.min_support}"
        else:
            ok = check_condition(rule.condition, item.value, rule.threshold)
            entry["status"], entry["note"] = (STATUS_PASS, "") if ok else (STATUS_FAIL, "")
            if not ok:
                failing.append(item)
        groups.append(entry)
    evaluated = [g for g in groups if g["status"] != STATUS_SKIPPED]
    n_skipped = len(groups) - len(evaluated)
    required = describe_condition(rule.condition, rule.threshold)
    if not groups:
        return make_result(
            rule, status=STATUS_PASS, observed=None, groups=[], message=f"no {noun} to check: nothing to fail"
        )
    if not evaluated:
        return make_result(
            rule,
            status=STATUS_SKIPPED,
            observed=None,
            groups=groups,
            message=f"all {len(groups)} {noun} skipped (support < min_support {rule.min_support} or undefined)",
        )
    n_pass = len(evaluated) - len(failing)
    fraction = n_pass / len(evaluated)
    passed = fraction >= rule.mostly or math.isclose(fraction, rule.mostly, rel_tol=1e-9)
    message = f"{n_pass} of {len(evaluated)} {noun} meet {rule.metric} {required} ({fraction:.0%}; "
    message += f"{'at least ' if rule.mostly < 1 else ''}{rule.mostly:.0%} required)"
    if failing:
        shown = ", ".join(f"{g.group}={format_value(g.value)}" for g in failing[:5])
        message += f"; failing: {shown}" + (f" and {len(failing) - 5} more" if len(failing) > 5 else "")
    if n_skipped:
        message += f"; {n_skipped} skipped (support < {rule.min_support} or undefined)"
    evidence = [sample_id for item in failing for sample_id in item.evidence]
    return make_result(
        rule,
        status=STATUS_PASS if passed else STATUS_FAIL,
        observed=fraction,
        message=message,
        groups=groups,
        evidence=list(dict.fromkeys(evidence)),
    )


def compute_group_metrics(samples: pd.DataFrame, column: str, metric: str) -> list[GroupValue]:
    """`metric` (one of spec.GROUP_METRICS) for every value of `column`, sorted by value.

    Rates and counts use all splits; `accuracy` uses held-out rows (split != train) and the main model's
    `predicted_label`; `oof_accuracy` uses every row with an out-of-fold prediction. `*_gap` is the accuracy
    of all other groups minus this group's (positive: the group is worse).
    """
    if column not in samples.columns:
        present = ", ".join(c for c in samples.columns if c.startswith("meta_")) or "none"
        raise MetricError(f"samples.parquet has no column {column!r} (metadata columns present: {present})")
    keys = samples[column].astype("object").where(samples[column].notna(), MISSING_VALUE).astype(str).to_numpy()
    ids = samples[SAMPLE_ID].astype(str).to_numpy()
    compute = _group_metric_function(samples, metric)
    return [compute(key, keys == key, ids) for key in sorted(set(keys.tolist()))]


def _group_metric_function(samples: pd.DataFrame, metric: str) -> Callable[[str, np.ndarray, np.ndarray], GroupValue]:
    def need(name: str) -> pd.Series:
        if name not in samples.columns:
            raise MetricError(f"per-group metric {metric!r} needs column {name!r}, which samples.parquet lacks")
        return samples[name]

    if metric == "n":
        return lambda key, inside, ids: GroupValue(key, int(inside.sum()), int(inside.sum()), [])
    if metric.startswith(("label_issue.", "harmful.")):
        flag_column, score_column = (
            (IS_LABEL_ISSUE, LABEL_ISSUE_SCORE)
            if metric.startswith("label_issue.")
            else (
                IS_HARMFUL,
                HARM_SCORE,
            )
        )
        flags = need(flag_column).fillna(False).astype(bool).to_numpy()
        order = _descending_order(samples, score_column)
        as_rate = metric.endswith(".rate")

        def flagged_share(key: str, inside: np.ndarray, ids: np.ndarray) -> GroupValue:
            n = int(inside.sum())
            hits = inside & flags
            value = float(hits.sum() / n) if as_rate else int(hits.sum())
            return GroupValue(key, value, n, [str(i) for i in ids[order][hits[order]]])

        return flagged_share
    if metric.startswith("oof_accuracy"):
        predicted = need(OOF_PREDICTED_LABEL)
        usable = predicted.notna().to_numpy()
    else:
        predicted = need(PREDICTED_LABEL)
        usable = (need(SPLIT).astype(str) != TRAIN_SPLIT).to_numpy() & predicted.notna().to_numpy()
    correct = (predicted.astype(str).to_numpy() == need(LABEL).astype(str).to_numpy()) & usable
    gap = metric.endswith("_gap")

    def accuracy(key: str, inside: np.ndarray, ids: np.ndarray) -> GroupValue:
        rows = inside & usable
        support = int(rows.sum())
        wrong = [str(i) for i in ids[rows & ~correct]]
        if not support:
            return GroupValue(key, None, 0, [], "no rows with a held-out prediction")
        own = float(correct[rows].mean())
        if not gap:
            return GroupValue(key, own, support, wrong)
        rest = ~inside & usable
        if not rest.any():
            return GroupValue(key, None, support, wrong, "no other group to compare with")
        return GroupValue(key, float(correct[rest].mean()) - own, support, wrong)

    return accuracy


def _descending_order(samples: pd.DataFrame, score_column: str) -> np.ndarray:
    """Row order by `score_column` descending (ties by sample_id), or by sample_id when there is no score."""
    ids = samples[SAMPLE_ID].astype(str).to_numpy()
    if score_column not in samples.columns:
        return np.argsort(ids, kind="stable")
    scores = pd.to_numeric(samples[score_column], errors="coerce").fillna(-np.inf).to_numpy(dtype=float)
    return np.lexsort((ids, -scores))


def compute_slice_metrics(findings: Sequence[Mapping[str, Any]], metric: str) -> list[GroupValue]:
    """`metric` (one of spec.SLICE_METRICS) for every slice finding, sorted by '<column>=<value> [<flag>]'.

    `rate_gap` is rate - rest_rate; `accuracy_gap` is the same for slices of out-of-fold errors only
    (flag 'misclassified') and `label_issue_gap` for slices of likely mislabels (flag 'label_issue').
    """
    values = []
    for finding in findings:
        if finding.get("kind") != "slice":
            continue
        evidence = finding.get("evidence") or {}
        flag = str(evidence.get("flag", ""))
        if (metric == "accuracy_gap" and flag != "misclassified") or (
            metric == "label_issue_gap" and flag != "label_issue"
        ):
            continue
        key = f"{evidence.get('column', '?')}={evidence.get('value', '?')} [{flag}]"
        support = evidence.get("n")
        source = "rate" if metric in ("rate_gap", "accuracy_gap", "label_issue_gap") else metric
        raw = evidence.get(source)
        value: float | None = float(raw) if is_number(raw) else None
        if value is not None and source != metric:
            rest = evidence.get("rest_rate")
            value = value - float(rest) if is_number(rest) else None
        ids = [str(s) for s in finding.get("sample_ids") or []]
        note = "" if value is not None else f"finding lacks evidence.{source}"
        values.append(GroupValue(key, value, int(support) if is_number(support) else len(ids), ids, note))
    return sorted(values, key=lambda v: v.group)
