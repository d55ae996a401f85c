"""Waivers (live, expired, on passing rules) and the verdict under each --fail-on level."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from gate_fake_run import rule, write_pack

from auditor.gate.evaluate import GateInputs, evaluate_pack
from auditor.gate.spec import Waiver, load_rule_pack
from auditor.gate.verdict import count_statuses, decide_verdict
from auditor.gate.waivers import apply_waiver


def _waiver(expires: date, rule_id: str = "leak") -> dict[str, Any]:
    return {"rule": rule_id, "reason": "known duplicate, fixed upstream", "approved_by": "lead", "expires": expires}


def _evaluate(tmp_path: Path, inputs: GateInputs, today: date, waivers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pack = write_pack(
        tmp_path / "p.yaml",
        [rule("leak", "leakage.cross_split_pairs", "eq", 0), rule("rate", "issues.label_issue.rate", "lte", 0.5)],
        waivers,
    )
    return evaluate_pack(load_rule_pack(pack), inputs, today=today)


def test_live_waiver_turns_a_failure_into_waived(tmp_path: Path, gate_inputs: GateInputs, today: date) -> None:
    leak, rate = _evaluate(tmp_path, gate_inputs, today, [_waiver(today + timedelta(days=30))])
    assert leak["status"] == "waived"
    assert leak["expired_waiver"] is False
    assert leak["waiver"] == {
        "rule": "leak",
        "reason": "known duplicate, fixed upstream",
        "approved_by": "lead",
        "expires": (today + timedelta(days=30)).isoformat(),
        "expired": False,
    }
    assert leak["message"].startswith(f"waived until {(today + timedelta(days=30)).isoformat()} (approved by lead")
    assert rate["status"] == "pass"
    assert decide_verdict([leak, rate]) == "pass"


@pytest.mark.parametrize("days_ago", [0, 1, 400])
def test_expired_waiver_no_longer_applies(tmp_path: Path, gate_inputs: GateInputs, today: date, days_ago: int) -> None:
    leak, _ = _evaluate(tmp_path, gate_inputs, today, [_waiver(today - timedelta(days=days_ago))])
    assert leak["status"] == "fail"
    assert leak["expired_waiver"] is True
    assert leak["waiver"]["expired"] is True
    assert "expired on" in leak["message"]
    assert "no longer applies" in leak["message"]
    assert decide_verdict([leak]) == "fail"


def test_waiver_on_a_passing_rule_keeps_pass(tmp_path: Path, gate_inputs: GateInputs, today: date) -> None:
    _, rate = _evaluate(tmp_path, gate_inputs, today, [_waiver(today + timedelta(days=1), "rate")])
    assert rate["status"] == "pass"
    assert rate["waiver"]["expired"] is False


def test_waiver_covers_an_error_too() -> None:
    waiver = Waiver(rule="r", reason="metric added next release", approved_by="x", expires=date(2030, 1, 1))
    result = {"status": "error", "message": "metric 'a.b' not found"}
    assert apply_waiver(result, waiver, date(2029, 12, 31))["status"] == "waived"
    assert apply_waiver(result, waiver, date(2030, 1, 1))["status"] == "error"


def _result(severity: str, status: str) -> dict[str, Any]:
    return {"severity": severity, "status": status}


@pytest.mark.parametrize(
    ("results", "fail_on", "verdict"),
    [
        ([], "critical", "pass"),
        ([_result("critical", "pass"), _result("warning", "pass")], "critical", "pass"),
        ([_result("critical", "fail")], "critical", "fail"),
        ([_result("critical", "error")], "critical", "fail"),
        ([_result("warning", "fail")], "critical", "warn"),
        ([_result("warning", "error")], "critical", "warn"),
        ([_result("warning", "fail")], "warning", "fail"),
        ([_result("info", "fail")], "critical", "pass"),
        ([_result("info", "fail")], "warning", "pass"),
        ([_result("info", "fail")], "info", "fail"),
        ([_result("critical", "waived"), _result("critical", "skipped")], "info", "pass"),
    ],
)
def test_verdict(results: list[dict[str, Any]], fail_on: str, verdict: str) -> None:
    assert decide_verdict(results, fail_on) == verdict


def test_unknown_fail_on_is_refused() -> None:
    with pytest.raises(ValueError, match="fail_on"):
        decide_verdict([], "blocker")


def test_status_counts_list_every_status() -> None:
    counts = count_statuses([_result("critical", "fail"), _result("info", "fail"), _result("info", "waived")])
    assert counts == {"pass": 0, "fail": 2, "error": 0, "waived": 1, "skipped": 0}
