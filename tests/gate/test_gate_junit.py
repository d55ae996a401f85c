"""audit.junit.xml: parses, one testcase per rule, failure/error/skipped by status, hostile text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from gate_fake_run import HOSTILE

from auditor.report.junit import render_junit


def _result(rule_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "metric": "issues.label_issue.rate",
        "condition": "lte",
        "threshold": 0.05,
        "observed": 0.2,
        "severity": "critical",
        "status": status,
        "message": f"{rule_id} says {HOSTILE}",
        "waiver": None,
        "expired_waiver": False,
        "for_each": None,
        "groups": None,
        "evidence_sample_ids": ["s1", "s2"],
        "description": "",
        "owner": "team",
    } | extra


def test_one_testcase_per_rule_with_status_elements() -> None:
    waiver = {"rule": "w", "reason": HOSTILE, "approved_by": "x", "expires": "2030-01-01", "expired": False}
    results = [
        _result("p", "pass"),
        _result("f", "fail"),
        _result("e", "error"),
        _result("w", "waived", waiver=waiver),
        _result("s", "skipped", severity="warning"),
        _result(
            "g", "fail", for_each="class", groups=[{"group": "a<b", "observed": 0.1, "support": 3, "status": "fail"}]
        ),
    ]
    text = render_junit(results, verdict="fail")
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["p", "f", "e", "w", "s", "g"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "6",
        "2",
        "1",
        "2",
    )
    kinds = {c.get("name"): [child.tag for child in c if child.tag != "system-out"] for c in cases}
    assert kinds == {"p": [], "f": ["failure"], "e": ["error"], "w": ["skipped"], "s": ["skipped"], "g": ["failure"]}
    assert cases[1].get("classname") == "auditor.gate.critical"
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == f"f says {HOSTILE}"  # exact text after unescaping
    assert "evidence sample ids: s1, s2" in (failure.text or "")
    assert "a<b: 0.1 (n=3) fail" in (cases[5].findtext("system-out") or "")
    assert HOSTILE not in text  # escaped in the raw XML
    prop = suite.find("properties/property")
    assert prop is not None
    assert (prop.get("name"), prop.get("value")) == ("verdict", "fail")


def test_control_characters_do_not_break_the_xml() -> None:
    text = render_junit([_result("c", "fail", message="bad \x00\x1b byte")])
    failure = ET.fromstring(text).find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == "bad \ufffd\ufffd byte"


def test_rendering_is_deterministic() -> None:
    results = [_result("f", "fail"), _result("p", "pass")]
    assert render_junit(results, verdict="fail") == render_junit(results, verdict="fail")
