"""Rule evaluation on the fake run: dotted paths, for_each class / metadata / slices, mostly, min_support, baseline."""

from __future__ import annotations

import math
from typing import Any

import pytest
from gate_fake_run import base_metrics

from auditor.gate.evaluate import GateInputs, compute_change, evaluate_rule, resolve_metric
from auditor.gate.spec import Rule


def _rule(metric: str, condition: str = "lte", threshold: Any = 0.5, **extra: Any) -> Rule:
    return Rule(id="r", metric=metric, condition=condition, threshold=threshold, severity="critical", **extra)


def _groups(result: dict[str, Any]) -> dict[str, tuple[Any, int, str]]:
    return {g["group"]: (g["observed"], g["support"], g["status"]) for g in result["groups"]}


# -- dotted paths ---------------------------------------------------------------------------------


def test_dotted_path_resolves_nested_leaves() -> None:
    metrics = base_metrics()
    assert resolve_metric(metrics, "issues.label_issue.rate") == pytest.approx(0.15)
    assert resolve_metric(metrics, "model.accuracy.val") == 0.6667
    assert resolve_metric(metrics, "leakage.cross_split_pairs") == 1


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("issues.nope.rate", "no 'nope' under issues (available: duplicate, harmful, image_issue, label_issue)"),
        ("nothing", "no 'nothing' under the top level"),
        ("issues.label_issue", "is a group of metrics; name one of its values: issues.label_issue.count"),
        ("issues.label_issue.rate.x", "'issues.label_issue.rate' is a value, not a group"),
        ("model.oof_accuracy", "is null: this run did not compute it"),
    ],
)
def test_bad_metric_paths_give_error_results(gate_inputs: GateInputs, metric: str, expected: str) -> None:
    result = evaluate_rule(_rule(metric), gate_inputs)
    assert result["status"] == "error"
    assert result["observed"] is None
    assert expected in result["message"]


def test_plain_rule_pass_fail_and_evidence(gate_inputs: GateInputs) -> None:
    passing = evaluate_rule(_rule("issues.label_issue.rate", "lte", 0.2), gate_inputs)
    failing = evaluate_rule(_rule("issues.label_issue.rate", "lte", 0.1), gate_inputs)
    assert (passing["status"], failing["status"]) == ("pass", "fail")
    assert failing["observed"] == pytest.approx(0.15)
    assert failing["message"] == "issues.label_issue.rate = 0.15, required <= 0.1"
    assert failing["evidence_sample_ids"][:2] == ["s031", "s030"]  # the label-issue finding's order
    leakage = evaluate_rule(_rule("leakage.cross_split_pairs", "eq", 0), gate_inputs)
    assert leakage["status"] == "fail"
    assert leakage["evidence_sample_ids"] == ["s001", "s003"]


def test_result_has_every_contract_key(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("issues.label_issue.rate"), gate_inputs)
    assert set(result) >= {
        "rule_id",
        "metric",
        "condition",
        "threshold",
        "observed",
        "severity",
        "status",
        "waiver",
        "expired_waiver",
        "groups",
        "evidence_sample_ids",
        "description",
        "owner",
    }


# -- for_each -------------------------------------------------------------------------------------


def test_for_each_class_held_out_accuracy(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("accuracy", "gte", 0.5, for_each="class"), gate_inputs)
    assert _groups(result) == {"a": (1.0, 5, "pass"), "b": (1.0, 5, "pass"), "c": (0.0, 5, "fail")}
    assert result["status"] == "fail"
    assert result["observed"] == pytest.approx(2 / 3)
    assert result["evidence_sample_ids"] == ["s011", "s023", "s035", "s047", "s059"]
    assert "2 of 3 classes meet accuracy >= 0.5" in result["message"]
    assert "failing: c=0" in result["message"]


def test_for_each_class_accuracy_gap_and_oof(gate_inputs: GateInputs) -> None:
    gap = evaluate_rule(_rule("accuracy_gap", "lte", 0.2, for_each="class"), gate_inputs)
    assert _groups(gap)["c"] == (1.0, 5, "fail")
    assert _groups(gap)["a"][0] == pytest.approx(-0.5)
    oof = evaluate_rule(_rule("oof_accuracy", "gte", 0.9, for_each="class"), gate_inputs)
    assert _groups(oof)["c"] == (0.5, 20, "fail")
    oof_gap = evaluate_rule(_rule("oof_accuracy_gap", "lte", 0.6, for_each="class"), gate_inputs)
    assert _groups(oof_gap)["c"][0] == pytest.approx(0.5)
    assert oof_gap["status"] == "pass"


def test_mostly_lets_a_fraction_of_groups_fail(gate_inputs: GateInputs) -> None:
    strict = evaluate_rule(_rule("accuracy", "gte", 0.5, for_each="class", mostly=0.7), gate_inputs)
    lenient = evaluate_rule(_rule("accuracy", "gte", 0.5, for_each="class", mostly=0.6), gate_inputs)
    assert (strict["status"], lenient["status"]) == ("fail", "pass")
    assert "at least 60% required" in lenient["message"]


def test_min_support_skips_small_groups(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("label_issue.rate", "lte", 0.1, for_each="meta_group", min_support=10), gate_inputs)
    groups = _groups(result)
    assert groups["g1"] == (pytest.approx(1 / 24), 24, "pass")
    assert groups["g2"] == (pytest.approx(8 / 30), 30, "fail")
    assert groups["tiny"] == (0.0, 6, "skipped")
    assert result["status"] == "fail"
    assert result["observed"] == 0.5
    assert result["evidence_sample_ids"] == [f"s{i:03d}" for i in range(24, 32)]
    assert "1 skipped" in result["message"]
    everything_small = evaluate_rule(_rule("accuracy", "gte", 0.5, for_each="class", min_support=6), gate_inputs)
    assert everything_small["status"] == "skipped"
    assert everything_small["observed"] is None


def test_for_each_counts_and_missing_values(gate_inputs: GateInputs) -> None:
    sizes = evaluate_rule(_rule("n", "gte", 10, for_each="meta_site"), gate_inputs)
    assert _groups(sizes) == {"(missing)": (6, 6, "fail"), "north": (30, 30, "pass"), "south": (24, 24, "pass")}
    harmful = evaluate_rule(_rule("harmful.count", "eq", 0, for_each="meta_group"), gate_inputs)
    assert _groups(harmful)["g1"] == (2, 24, "fail")
    assert harmful["evidence_sample_ids"] == ["s006", "s005"]  # highest harm_score first


def test_for_each_metadata_covers_every_meta_column(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("label_issue.rate", "lte", 0.2, for_each="metadata", min_support=10), gate_inputs)
    assert set(_groups(result)) == {
        "meta_group=g1",
        "meta_group=g2",
        "meta_group=tiny",
        "meta_site=(missing)",
        "meta_site=north",
        "meta_site=south",
    }
    assert [g for g, (_, _, status) in _groups(result).items() if status == "fail"] == ["meta_group=g2"]


def test_unknown_metadata_column_is_an_error(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("accuracy", for_each="meta_scanner"), gate_inputs)
    assert result["status"] == "error"
    assert "no column 'meta_scanner' (metadata columns present: meta_group, meta_site)" in result["message"]


def test_for_each_slices(gate_inputs: GateInputs) -> None:
    gap = evaluate_rule(_rule("accuracy_gap", "lte", 0.5, for_each="slices"), gate_inputs)
    assert _groups(gap) == {
        "meta_group=g2 [misclassified]": (pytest.approx(0.4), 30, "pass"),
        "meta_group=tiny [misclassified]": (pytest.approx(0.8), 6, "fail"),
    }
    assert gap["status"] == "fail"
    assert gap["evidence_sample_ids"] == [f"s{i:03d}" for i in range(54, 60)]
    supported = evaluate_rule(_rule("accuracy_gap", "lte", 0.5, for_each="slices", min_support=10), gate_inputs)
    assert supported["status"] == "pass"
    label = evaluate_rule(_rule("label_issue_gap", "lte", 0.2, for_each="slices"), gate_inputs)
    assert _groups(label) == {"meta_group=g2 [label_issue]": (pytest.approx(0.25), 30, "fail")}
    lift = evaluate_rule(_rule("lift", "lte", 10, for_each="slices"), gate_inputs)
    assert len(lift["groups"]) == 3


def test_no_slices_is_a_pass(gate_run: Any) -> None:
    inputs = GateInputs.from_tables(base_metrics(), [], gate_run.read_table("samples"))
    result = evaluate_rule(_rule("accuracy_gap", for_each="slices"), inputs)
    assert (result["status"], result["observed"], result["groups"]) == ("pass", None, [])


# -- baseline -------------------------------------------------------------------------------------


def _baseline(**issues: float) -> dict[str, Any]:
    metrics = base_metrics()
    metrics["issues"]["label_issue"]["rate"] = issues.get("rate", 0.10)
    metrics["leakage"]["cross_split_pairs"] = issues.get("pairs", 0)
    return metrics


def test_baseline_absolute_and_relative_change(gate_inputs: GateInputs) -> None:
    absolute = _rule("issues.label_issue.rate", "lte", 0.01, baseline_change="absolute")
    result = evaluate_rule(absolute, gate_inputs, baseline=_baseline())
    assert result["status"] == "fail"
    assert result["observed"] == pytest.approx(0.05)
    assert result["baseline"] == {"change": "absolute", "baseline_value": 0.1, "current_value": pytest.approx(0.15)}
    assert "0.1 -> 0.15: change 0.05, required <= 0.01" in result["message"]
    relative = _rule("issues.label_issue.rate", "lte", 0.6, baseline_change="relative")
    result = evaluate_rule(relative, gate_inputs, baseline=_baseline())
    assert result["status"] == "pass"
    assert result["observed"] == pytest.approx(0.5)
    improved = evaluate_rule(absolute, gate_inputs, baseline=_baseline(rate=0.3))
    assert improved["status"] == "pass"


def test_relative_change_from_zero_is_unbounded(gate_inputs: GateInputs) -> None:
    rule = _rule("leakage.cross_split_pairs", "lte", 0.1, baseline_change="relative")
    result = evaluate_rule(rule, gate_inputs, baseline=_baseline(pairs=0))
    assert result["status"] == "fail"
    assert math.isinf(result["observed"])
    assert "unbounded (baseline was 0)" in result["message"]
    assert compute_change(0.0, 0.0, "relative") == 0.0
    assert compute_change(2.0, 1.0, "relative") == -0.5


def test_baseline_rule_without_baseline_is_skipped(gate_inputs: GateInputs) -> None:
    result = evaluate_rule(_rule("issues.label_issue.rate", baseline_change="absolute"), gate_inputs)
    assert result["status"] == "skipped"
    assert "--baseline" in result["message"]


def test_baseline_missing_the_metric_is_an_error(gate_inputs: GateInputs) -> None:
    baseline = base_metrics()
    del baseline["leakage"]
    result = evaluate_rule(
        _rule("leakage.cross_split_pairs", baseline_change="absolute"), gate_inputs, baseline=baseline
    )
    assert result["status"] == "error"
    assert result["message"].startswith("baseline: metric 'leakage.cross_split_pairs' not found")
