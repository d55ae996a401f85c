"""Waivers: a live waiver turns a failing rule into 'waived'; an expired one no longer applies and is reported.

Pure: works on result dicts and Waiver objects; the expiry date is compared with the `today` it is given.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from auditor.gate.spec import Waiver

STATUS_WAIVED = "waived"
FAILING_STATUSES = ("fail", "error")
"""Statuses that count against the gate (by the rule's severity) unless a live waiver covers them."""


def today_utc() -> date:
    """The current date in UTC: waivers expire at 00:00 UTC of their `expires` date."""
    return datetime.now(UTC).date()


def apply_waiver(result: dict[str, Any], waiver: Waiver | None, today: date) -> dict[str, Any]:
    """`result` with its waiver recorded; a failing result under a live waiver becomes status 'waived'.

    A rule that passes keeps status 'pass' (its waiver is still shown). An expired waiver sets
    `expired_waiver` and leaves the status alone, so the rule fails again until the waiver is renewed.
    """
    if waiver is None:
        return result
    state = waiver.to_dict(today)
    updated = {**result, "waiver": state, "expired_waiver": state["expired"]}
    if state["expired"]:
        updated["message"] = (
            f"{result['message']} [waiver approved by {waiver.approved_by} expired on {state['expires']}; "
            "it no longer applies]"
        )
    elif result["status"] in FAILING_STATUSES:
        updated["status"] = STATUS_WAIVED
        updated["message"] = (
            f"waived until {state['expires']} (approved by {waiver.approved_by}: {waiver.reason}); "
            f"{result['status']}: {result['message']}"
        )
    return updated
