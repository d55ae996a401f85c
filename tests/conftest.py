"""Fixtures shared by every test package. Package-specific builders live in that package's conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets folder: $AUDITOR_SHARED_DATA, else ../shared/data beside the repository; skip if absent."""
    configured = os.environ.get("AUDITOR_SHARED_DATA")
    folder = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    if not folder.is_dir():
        source = "$AUDITOR_SHARED_DATA" if configured else "the default ../shared/data"
        pytest.skip(f"real shared datasets not found at {folder} ({source}); set AUDITOR_SHARED_DATA to run these")
    return folder
