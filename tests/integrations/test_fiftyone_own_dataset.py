"""Audits of image folders: `--no-fiftyone` never imports fiftyone; otherwise the audit gets its own dataset
`auditor-<run name>` (also when a finished run is resumed), and `auditor fiftyone remove` deletes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fo_helpers import AUDIT_ARGS, PlantedImages, fiftyone_env, run_cli, run_cli_then_snapshot, run_python

RUN_NAME = "folder-audit"
DATASET = f"auditor-{RUN_NAME}"

NO_FIFTYONE_CODE = """
    import json
    import sys

    import auditor

    after_import = "fiftyone" in sys.modules
    from auditor.cli import main

    code = main({argv!r})
    print(json.dumps({{"exit": code, "after_import": after_import, "after_audit": "fiftyone" in sys.modules}}))
"""


@pytest.fixture(scope="module")
def folder_run(planted_images: PlantedImages, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """An audit of the planted image folder with --no-fiftyone, run by `auditor.cli.main` in a new interpreter."""
    root = tmp_path_factory.mktemp("folder-run")
    env = fiftyone_env(root / "db")
    run_dir = root / RUN_NAME
    argv = ["-q", "audit", str(planted_images.root), "--out", str(run_dir), "--no-fiftyone", *AUDIT_ARGS]
    outcome = run_python(NO_FIFTYONE_CODE.format(argv=argv), env)
    return run_dir, env, outcome


@pytest.mark.slow
def test_import_and_no_fiftyone_audit_never_import_fiftyone(folder_run: tuple[Path, dict, dict]) -> None:
    run_dir, _, outcome = folder_run
    assert outcome["exit"] == 0
    assert outcome["after_import"] is False
    assert outcome["after_audit"] is False
    assert (run_dir / "index.html").is_file()
    assert not (run_dir / "fiftyone.json").exists()
    assert all(f["fiftyone_view"] is None for f in json.loads((run_dir / "findings.json").read_text()))


@pytest.mark.slow
def test_resumed_run_gets_its_own_dataset_and_remove_deletes_it(
    folder_run: tuple[Path, dict, dict], planted_images: PlantedImages
) -> None:
    run_dir, env, _ = folder_run
    audit = ["audit", str(planted_images.root), "--out", str(run_dir), *AUDIT_ARGS]
    codes, snapshot = run_cli_then_snapshot([audit], DATASET, env)
    assert codes == [0]
    record = json.loads((run_dir / "fiftyone.json").read_text(encoding="utf-8"))
    assert record["dataset"] == DATASET
    assert record["created_dataset"] is True
    assert snapshot["n_samples"] == 24
    assert {"ground_truth", "split", "auditor_sample_id", "audit_label_issue_score", "audit_cluster"} <= set(
        snapshot["fields"]
    )
    findings = json.loads((run_dir / "findings.json").read_text(encoding="utf-8"))
    assert {f["fiftyone_view"] for f in findings} <= set(snapshot["views"])
    assert snapshot["brain_runs"] == ["auditor_folder_audit_embeddings"]
    assert snapshot["tags"].get("audit:label_issue") == len(planted_images.flipped)

    remove = ["fiftyone", "remove", str(run_dir)]
    codes, after = run_cli_then_snapshot([remove, remove], DATASET, env)
    assert codes == [0, 2], "a second remove has nothing to remove"
    assert after == {"exists": False}
    assert not (run_dir / "fiftyone.json").exists()


def test_app_on_a_missing_run_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(["app", str(tmp_path / "no-such-run")], fiftyone_env(tmp_path / "db"))
    assert result.returncode == 2
    assert "is not an auditor run directory" in result.stderr
