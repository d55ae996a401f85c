"""JUnit XML of the rule gate: one <testcase> per rule, so CI systems list each rule like a test.

Status mapping: fail -> <failure>, error -> <error>, waived and skipped -> <skipped>, pass -> nothing.
Built with xml.etree (escaping by construction); no timestamps, so the file is deterministic.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

JUNIT_XML = "audit.junit.xml"
SUITE_NAME = "auditor.gate"

# Characters XML 1.0 cannot hold at all, even escaped.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def render_junit(results: Sequence[Mapping[str, Any]], *, verdict: str = "", suite: str = SUITE_NAME) -> str:
    """The JUnit XML text of `results` (gate result dicts), with the verdict as a suite property."""
    statuses = [str(r.get("status", "")) for r in results]
    root = ET.Element("testsuites", {"name": suite})
    testsuite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": suite,
            "tests": str(len(results)),
            "failures": str(statuses.count("fail")),
            "errors": str(statuses.count("error")),
            "skipped": str(sum(s in ("waived", "skipped") for s in statuses)),
            "time": "0",
        },
    )
    properties = ET.SubElement(testsuite, "properties")
    ET.SubElement(properties, "property", {"name": "verdict", "value": _clean(verdict)})
    for result in results:
        _add_testcase(testsuite, result, suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _add_testcase(parent: ET.Element, result: Mapping[str, Any], suite: str) -> None:
    severity = _clean(result.get("severity", ""))
    case = ET.SubElement(
        parent,
        "testcase",
        {"classname": f"{suite}.{severity or 'rule'}", "name": _clean(result.get("rule_id", "")), "time": "0"},
    )
    status = str(result.get("status", ""))
    message = _clean(result.get("message", ""))
    if status == "fail":
        ET.SubElement(case, "failure", {"message": message, "type": severity}).text = _details(result)
    elif status == "error":
        ET.SubElement(case, "error", {"message": message, "type": "rule_error"}).text = _details(result)
    elif status in ("waived", "skipped"):
        ET.SubElement(case, "skipped", {"message": f"{status}: {message}"})
    ET.SubElement(case, "system-out").text = _details(result)


def _details(result: Mapping[str, Any]) -> str:
    """Plain-text lines: metric, condition and threshold, observed value, severity, owner, evidence, waiver."""
    lines = [
        f"metric: {result.get('metric')}",
        f"condition: {result.get('condition')} {result.get('threshold')}",
        f"observed: {result.get('observed')}",
        f"severity: {result.get('severity')}",
        f"status: {result.get('status')}",
    ]
    if result.get("for_each"):
        mostly, min_support = result.get("mostly"), result.get("min_support")
        lines.append(f"for_each: {result.get('for_each')} (mostly {mostly}, min_support {min_support})")
        for group in result.get("groups") or []:
            lines.append(
                f"  {group.get('group')}: {group.get('observed')} (n={group.get('support')}) {group.get('status')}"
            )
    waiver = result.get("waiver")
    if isinstance(waiver, Mapping):
        state = "EXPIRED" if waiver.get("expired") else "live"
        lines.append(
            f"waiver ({state}): expires {waiver.get('expires')}, approved by {waiver.get('approved_by')}: "
            f"{waiver.get('reason')}"
        )
    if result.get("owner"):
        lines.append(f"owner: {result.get('owner')}")
    if result.get("description"):
        lines.append(f"description: {result.get('description')}")
    evidence = result.get("evidence_sample_ids") or []
    if evidence:
        lines.append("evidence sample ids: " + ", ".join(str(s) for s in evidence))
    return _clean("\n".join(lines))


def _clean(value: Any) -> str:
    """Text without characters XML 1.0 forbids (they would make the file unparseable)."""
    return _INVALID_XML.sub("\ufffd", "" if value is None else str(value))
