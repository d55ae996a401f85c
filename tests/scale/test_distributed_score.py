"""`auditor score RUN`: re-scoring with the stored models, its refusals, and the torchrun-sharded form.

Known answers: re-scoring in one process reproduces the audit's scores exactly; two torchrun ranks on
gloo give the same scores up to float rounding (relative difference <= 1e-4 of each column's scale), and
rank 0's log shows it scored only its half of the rows.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auditor.influence.distributed import gather_rows, shard_bounds
from tests.scale.conftest import FAST_FLAGS, HANG_GUARD_S, cli_env, run_cli


def _copy(run: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def _max_relative_difference(a: pd.Series, b: pd.Series) -> float:
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    assert np.array_equal(np.isnan(x), np.isnan(y)), f"{a.name}: NaN in different rows"
    scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 0.0
    return 0.0 if scale == 0 else float(np.nanmax(np.abs(x - y)) / scale)


@pytest.mark.parametrize(("n", "size"), [(48, 2), (10, 3), (2, 4), (0, 2)])
def test_shard_bounds_cover_every_row_once_in_order(n: int, size: int) -> None:
    bounds = [shard_bounds(n, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n
    assert all(stop == next_start for (_, stop), (next_start, _) in itertools.pairwise(bounds))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1


def test_gather_rows_is_the_identity_in_one_process() -> None:
    block = np.arange(12.0).reshape(2, 6)
    assert gather_rows(block, 6, axis=1) is block


def test_score_one_process_reproduces_the_audit_and_refuses_to_overwrite_silently(
    reference_run: Path, tmp_path: Path
) -> None:
    run = _copy(reference_run, tmp_path, "run")

    refused = run_cli("score", str(run))
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"auditor: error: {run} is already scored; pass --overwrite to score it again"

    done = run_cli("score", str(run), "--overwrite")
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "scores.parquet"), pd.read_parquet(reference_run / "scores.parquet")
    )
    assert (run / "findings.json").read_bytes() == (reference_run / "findings.json").read_bytes()
    assert json.loads((run / "manifest.json").read_text())["stages_done"] == [
        "ingest",
        "train",
        "score",
        "analyze",
        "report",
    ]


def test_score_refuses_a_folder_that_is_not_a_run_or_has_no_models(reference_run: Path, tmp_path: Path) -> None:
    not_run = run_cli("score", str(tmp_path))
    assert not_run.returncode == 2
    assert not_run.stderr.strip() == f"auditor: error: {tmp_path} is not an auditor run directory (no manifest.json)"

    untrained = _copy(reference_run, tmp_path, "untrained")
    manifest = json.loads((untrained / "manifest.json").read_text())
    manifest["stages_done"] = ["ingest"]
    (untrained / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(untrained / "model")
    no_models = run_cli("score", str(untrained), "--overwrite")
    assert no_models.returncode == 2
    assert no_models.stderr.strip() == (
        f"auditor: error: {untrained} has no trained models; run `auditor audit` on it first"
    )


def test_torchrun_two_ranks_give_the_one_process_scores(reference_run: Path, tmp_path: Path) -> None:
    single = _copy(reference_run, tmp_path, "single")
    assert run_cli("score", str(single), "--overwrite").returncode == 0
    sharded = _copy(reference_run, tmp_path, "sharded")
    (sharded / "scores.parquet").unlink()  # so the test cannot pass on the copied file

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "auditor", "score", str(sharded), "--overwrite"]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)

    assert done.returncode == 0, done.stderr
    assert "Joined a gloo job as rank 0 of 2" in done.stderr
    # rank 0 did only its block of the cross-fit TracIn (harm_score is the default if-cg, on every rank)
    assert "tracin fold0: rank 0 of 2 scores rows [0, " in done.stderr
    expected, got = pd.read_parquet(single / "scores.parquet"), pd.read_parquet(sharded / "scores.parquet")
    assert list(got.columns) == list(expected.columns)
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()
    for column in expected.columns.drop("sample_id"):
        assert _max_relative_difference(expected[column], got[column]) <= 1e-4, column
    assert (sharded / "findings.json").is_file()
    assert not list(sharded.rglob("*.tmp"))


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", "auditor", *args], env=cli_env(), capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def test_torchrun_audit_trains_once_and_scores_sharded_like_one_process(
    tiny_folder: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = _torchrun("audit", str(tiny_folder), "--out", str(out), *FAST_FLAGS)

    assert done.returncode == 0, done.stderr
    assert "Joined a gloo job as rank 0 of 2" in done.stderr
    assert done.stderr.count("Stage train") == 1  # rank 0 trained; rank 1 waited (its INFO lines are muted)
    assert "tracin fold0: rank 0 of 2 scores rows [0, " in done.stderr
    # Training is one process either way, so the models and everything before scoring are identical.
    for name in ("samples.parquet", "findings.json"):
        assert (out / name).is_file(), name
    expected, got = pd.read_parquet(reference_run / "scores.parquet"), pd.read_parquet(out / "scores.parquet")
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()
    for column in expected.columns.drop("sample_id"):
        assert _max_relative_difference(expected[column], got[column]) <= 1e-4, column
    stages = json.loads((out / "manifest.json").read_text())["stages_done"]
    assert stages == ["ingest", "train", "score", "analyze", "report"]
    assert not list(out.rglob("*.tmp"))


def test_torchrun_audit_reports_rank_0s_input_error_on_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _torchrun("audit", str(tmp_path / "missing"), "--out", str(out), "--no-fiftyone")
    assert done.returncode != 0
    assert done.stderr.count("auditor: error:") == 2  # both ranks say it, neither waits for the other
    assert not out.exists()


def test_other_commands_refuse_to_run_under_torchrun(reference_run: Path) -> None:
    done = run_cli("report", str(reference_run), WORLD_SIZE="2", RANK="0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "auditor: error: only `auditor audit` and `auditor score` run under torchrun; "
        "run `auditor report` as one process"
    )
