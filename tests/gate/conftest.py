"""Fixtures for gate tests: a fake analysed run (see gate_fake_run.py) and today's date."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from gate_fake_run import write_gate_run

from auditor.gate.evaluate import GateInputs
from auditor.gate.waivers import today_utc
from auditor.store import RunStore


@pytest.fixture
def gate_run(tmp_path: Path) -> RunStore:
    """An analysed run directory with planted per-class, per-group and slice answers."""
    return write_gate_run(tmp_path / "run")


@pytest.fixture
def gate_inputs(gate_run: RunStore) -> GateInputs:
    """GateInputs of `gate_run`."""
    return GateInputs.from_store(gate_run)


@pytest.fixture
def today() -> date:
    """Today in UTC, the date waivers are compared with."""
    return today_utc()
