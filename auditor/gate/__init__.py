"""The release gate: rule packs (YAML + JSON Schema) evaluated over a run's metrics and findings -> verdict.

Public entry points: `load_rule_pack`, `run_gate`, `load_gate_outcome`; see rules/README.md for the format.
"""

from __future__ import annotations

from auditor.gate.run import GATE_FILE, GateOutcome, load_baseline_metrics, load_gate_outcome, run_gate
from auditor.gate.spec import RulePack, load_rule_pack

__all__ = [
    "GATE_FILE",
    "GateOutcome",
    "RulePack",
    "load_baseline_metrics",
    "load_gate_outcome",
    "load_rule_pack",
    "run_gate",
]
