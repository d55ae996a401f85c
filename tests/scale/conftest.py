"""Fixtures for the scale tests: a tiny image folder, a CLI runner in a subprocess, and one finished audit of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.class_patterns import class_pattern

REPO_ROOT = Path(__file__).resolve().parents[2]
# The fast training options of tests/test_pipeline.py, as CLI flags.
FAST_FLAGS = ["--epochs", "8", "--checkpoints", "2", "--batch-size", "16", "--no-fiftyone"]
# A hang guard for one CLI call on a loaded 2-core machine, not a performance assertion.
HANG_GUARD_S = 900


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, one thread (reproducible sums)."""
    env = dict(os.environ) | extra
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    return env


def auditor_command(*args: str) -> list[str]:
    """`python -m auditor ARGS` with this interpreter."""
    return [sys.executable, "-m", "auditor", *args]


def run_cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and return the finished process (stdout and stderr captured)."""
    return subprocess.run(
        auditor_command(*args),
        env=cli_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 grey 12x12 images; two images of class 'a' are filed under 'b' and 'c' (planted flips)."""
    root = tmp_path_factory.mktemp("tiny")
    names = ["a", "b", "c"]
    for label in range(3):
        for i in range(16):
            folder = names[label]
            if label == 0 and i in (3, 9):
                folder = names[1 + (i == 9)]
            path = root / folder / f"x{label}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_pattern(label, i), mode="L").save(path)
    return root


@pytest.fixture(scope="session")
def reference_run(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted `auditor audit` of the tiny folder (seed 0); tests must not modify it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli("audit", str(tiny_folder), "--out", str(out), *FAST_FLAGS)
    assert done.returncode == 0, done.stderr
    return out
