"""Fixtures for report tests: fake run directories built in code by `report_fake_run.write_fake_run`."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fake_run import FakeRun, write_fake_run


@pytest.fixture
def fake_run(tmp_path: Path) -> FakeRun:
    """A complete run directory with scores, findings, metrics, errors and a demo self-check."""
    return write_fake_run(tmp_path)


@pytest.fixture
def bare_run(tmp_path: Path) -> FakeRun:
    """A run directory right after ingest: samples without scores, no findings, no metrics."""
    return write_fake_run(tmp_path, with_scores=False)
