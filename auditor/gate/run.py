"""Run the gate over a run directory: load the pack and baseline, evaluate, decide, and write gate.json.

Reads and writes only through the RunStore; rendering the reports with the outcome is the caller's step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from auditor.errors import ConfigError, DataError
from auditor.gate.evaluate import GateInputs, evaluate_pack
from auditor.gate.spec import RulePack, load_rule_pack
from auditor.gate.verdict import VERDICT_FAIL, count_statuses, decide_verdict
from auditor.gate.waivers import today_utc
from auditor.schema import GATE_FILE
from auditor.store import RunStore

logger = logging.getLogger(__name__)

AUDIT_JSON = "audit.json"
METRICS_JSON = "metrics.json"


@dataclass(frozen=True, kw_only=True)
class GateOutcome:
    """The verdict of one gate evaluation and everything needed to re-render it (stored as gate.json)."""

    verdict: str
    fail_on: str
    results: list[dict[str, Any]]
    rules_file: str
    rules_sha256: str
    baseline_file: str | None
    evaluated_on: str

    @property
    def failed(self) -> bool:
        """True when the gate fails (the CLI exits 1)."""
        return self.verdict == VERDICT_FAIL

    def to_dict(self) -> dict[str, Any]:
        """Plain form written to gate.json."""
        return {**asdict(self), "counts": count_statuses(self.results)}


def run_gate(
    store: RunStore,
    rules: str | Path | RulePack,
    *,
    baseline: str | Path | None = None,
    fail_on: str = "critical",
    today: date | None = None,
) -> GateOutcome:
    """Evaluate `rules` on the run in `store` (optionally against `baseline`), write gate.json, return the outcome."""
    pack = rules if isinstance(rules, RulePack) else load_rule_pack(rules)
    baseline_metrics = load_baseline_metrics(baseline) if baseline is not None else None
    day = today or today_utc()
    results = evaluate_pack(pack, GateInputs.from_store(store), baseline=baseline_metrics, today=day)
    outcome = GateOutcome(
        verdict=decide_verdict(results, fail_on),
        fail_on=fail_on,
        results=results,
        rules_file=str(pack.path.resolve()),
        rules_sha256=pack.sha256,
        baseline_file=str(Path(baseline).resolve()) if baseline is not None else None,
        evaluated_on=day.isoformat(),
    )
    store.write_json(GATE_FILE, outcome.to_dict())
    counts = count_statuses(results)
    logger.info(
        "Gate %s with %s: %s",
        outcome.verdict,
        pack.path.name,
        ", ".join(f"{n} {status}" for status, n in counts.items() if n),
    )
    return outcome


def load_gate_outcome(store: RunStore) -> GateOutcome | None:
    """The outcome stored by the last gate evaluation of this run, or None if it was never judged."""
    if not store.has(GATE_FILE):
        return None
    data = store.read_json(GATE_FILE)
    try:
        return GateOutcome(
            verdict=str(data["verdict"]),
            fail_on=str(data["fail_on"]),
            results=list(data["results"]),
            rules_file=str(data["rules_file"]),
            rules_sha256=str(data["rules_sha256"]),
            baseline_file=data.get("baseline_file"),
            evaluated_on=str(data["evaluated_on"]),
        )
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{store.path(GATE_FILE)} is not a gate outcome ({exc}); delete it or rerun `auditor check`"
        ) from exc


def load_baseline_metrics(baseline: str | Path) -> dict[str, Any]:
    """The `metrics` of a baseline: an audit.json file, or a run directory holding audit.json or metrics.json."""
    path = Path(baseline)
    if path.is_dir():
        candidates = [path / AUDIT_JSON, path / METRICS_JSON]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"--baseline {path}: the folder holds neither {AUDIT_JSON} nor {METRICS_JSON}")
        path = found
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"--baseline {path}: file not found; pass the audit.json of an earlier run") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--baseline {path}: cannot read it as JSON ({exc}); pass an audit.json") from exc
    if isinstance(document, dict) and isinstance(document.get("metrics"), dict):
        metrics: dict[str, Any] = document["metrics"]
        return metrics
    if isinstance(document, dict) and path.name == METRICS_JSON:
        return document
    raise ConfigError(f"--baseline {path}: has no 'metrics' object; pass the audit.json of an earlier run")
