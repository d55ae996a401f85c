"""The gate verdict from rule results: 'fail', 'warn' or 'pass', given the severity that fails the gate.

`fail_on='critical'` (default): a failing critical rule fails the gate; a failing warning rule makes the
verdict 'warn'. `fail_on='warning'` makes failing warnings fail too; `fail_on='info'` fails on anything.
Rules with status 'error' count as failing; 'waived' and 'skipped' never do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.gate.spec import SEVERITIES
from auditor.gate.waivers import FAILING_STATUSES

VERDICT_PASS, VERDICT_WARN, VERDICT_FAIL = "pass", "warn", "fail"
FAIL_ON_LEVELS = SEVERITIES
RULE_STATUSES = ("pass", "fail", "error", "waived", "skipped")
"""Every status a rule result can have."""

_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


def decide_verdict(results: Sequence[Mapping[str, Any]], fail_on: str = "critical") -> str:
    """'fail' if a failing rule is at least as severe as `fail_on`; else 'warn' if a warning (or worse)
    rule fails; else 'pass'."""
    if fail_on not in _RANK:
        raise ValueError(f"fail_on must be one of {', '.join(SEVERITIES)}; got {fail_on!r}")
    failing = [_RANK[str(r["severity"])] for r in results if r["status"] in FAILING_STATUSES]
    if any(rank <= _RANK[fail_on] for rank in failing):
        return VERDICT_FAIL
    if any(rank <= _RANK["warning"] for rank in failing):
        return VERDICT_WARN
    return VERDICT_PASS


def count_statuses(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number of results per status (every status present, zero when unused)."""
    counts = dict.fromkeys(RULE_STATUSES, 0)
    for result in results:
        status = str(result.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return counts
