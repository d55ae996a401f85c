"""SIGKILL an audit once its score stage has started, rerun the same command: it resumes to the same tables.

The kill is real (a subprocess, no cleanup handlers run), so this checks that no partially written file is
trusted on resume and that the stages before the kill are not redone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from tests.scale.conftest import FAST_FLAGS, HANG_GUARD_S, auditor_command, cli_env, run_cli

_POLL_S = 0.005


def _stages_done(run: Path) -> list[str]:
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return list(manifest.get("stages_done", []))


def _kill_during_score(command: list[str], run: Path) -> list[str]:
    """Start `command`, SIGKILL it as soon as the manifest says train is done; return the stages done then."""
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_GUARD_S  # hang guard only
        while "train" not in _stages_done(run):
            assert process.poll() is None, f"audit exited ({process.returncode}) before its score stage"
            assert time.monotonic() < deadline, "audit never reached the score stage"
            time.sleep(_POLL_S)
        assert process.poll() is None, "audit finished before it could be killed in its score stage"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return _stages_done(run)


def test_sigkill_in_score_then_rerun_gives_the_uninterrupted_tables(
    tiny_folder: Path, reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["audit", str(tiny_folder), "--out", str(run), *FAST_FLAGS]
    stages = _kill_during_score(auditor_command(*args), run)
    assert stages == ["ingest", "train"]
    assert not (run / "scores.parquet").exists()
    checkpoints = {p: p.stat().st_mtime_ns for p in (run / "model").rglob("*.pt")}
    assert len(checkpoints) == 3 * 2  # main + 2 folds, 2 checkpoints each

    resumed = run_cli(*args)

    assert resumed.returncode == 0, resumed.stderr
    assert "Stage train already done; skipping" in resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in (run / "model").rglob("*.pt")} == checkpoints  # not retrained
    assert _stages_done(run) == ["ingest", "train", "score", "analyze", "report"]
    for table in ("samples", "scores"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(run / f"{table}.parquet"), pd.read_parquet(reference_run / f"{table}.parquet")
        )
    assert (run / "findings.json").read_bytes() == (reference_run / "findings.json").read_bytes()
    assert not list(run.rglob("*.tmp")), "a killed write's temporary file was left in the run directory"


def _copy_back_to(reference_run: Path, tmp_path: Path, stages: list[str]) -> Path:
    """A copy of the reference run whose manifest says only `stages` are done (as if killed after them)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages_done"] = stages
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_a_killed_write_between_pixels_and_classes_is_redone(
    tiny_folder: Path, reference_run: Path, tmp_path: Path
) -> None:
    # Killed inside `train` after pixels.npy was written but before classes.json: the rerun must not trust
    # the lone pixels file (it used to skip both and then fail reading classes.json).
    run = _copy_back_to(reference_run, tmp_path, ["ingest"])
    (run / "classes.json").unlink()
    stale = run / ".scores.parquet.abc123.tmp"
    stale.write_bytes(b"half a parquet file")

    resumed = run_cli("audit", str(tiny_folder), "--out", str(run), *FAST_FLAGS)

    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "classes.json").read_text()) == ["a", "b", "c"]
    assert not stale.exists()
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "scores.parquet"), pd.read_parquet(reference_run / "scores.parquet")
    )
