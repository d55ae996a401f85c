"""An audit of a FiftyOne dataset lands on its real database: fields, tags, saved views, the embeddings plot and a
custom run, read back from a NEW process; a rerun is idempotent; the App opens the label-issue view; remove undoes it.

The tests share one audited dataset and run in file order (remove last).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fo_helpers import REPO_ROOT, AuditedDataset, fiftyone_env, run_cli, run_cli_then_snapshot
from PIL import Image

pytestmark = pytest.mark.slow

RUN_KEY = "auditor_planted_audit"
VIEW_PREFIX = "auditor-planted-audit-"
LABEL_ISSUE_VIEW = f"{VIEW_PREFIX}label-issues"
USER_FIELDS = {"ground_truth", "split", "scanner", "emb"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _audit_state(snapshot: dict) -> dict:
    """What a push owns, in a form two pushes can be compared by."""
    return {
        "fields": [f for f in snapshot["fields"] if f.startswith("audit_")],
        "tags": snapshot["tags"],
        "views": {name: view for name, view in snapshot["views"].items() if name.startswith(VIEW_PREFIX)},
        "runs": sorted(snapshot["runs"]),
        "brain_runs": snapshot["brain_runs"],
        "workspaces": snapshot["workspaces"],
    }


def test_fields_tags_views_and_run_are_in_the_database(audited_dataset: AuditedDataset) -> None:
    snapshot = audited_dataset.snapshot
    by_path = audited_dataset.ids
    flipped_ids = {by_path[p] for p in audited_dataset.images.flipped}
    duplicate_ids = {by_path[p] for p in audited_dataset.images.duplicates}

    assert snapshot["n_samples"] == 24
    for field in (
        "audit_label_issue_score",
        "audit_harm_score",
        "audit_self_influence",
        "audit_cluster",
        "audit_is_label_issue",
        "audit_loss",
        "audit_is_duplicate",
        "audit_split",
    ):
        assert field in snapshot["fields"], field
    assert snapshot["field_types"]["audit_suggested_label"] == "EmbeddedDocumentField"
    assert snapshot["field_types"]["audit_label_issue_score"] == "FloatField"
    assert set(snapshot["fields"]) >= USER_FIELDS
    for sample_id in flipped_ids:  # the planted flips: suggested back to their true class 'a'
        assert snapshot["suggested"][sample_id] == "a"

    assert set(snapshot["tag_ids"]["audit:label_issue"]) == flipped_ids
    assert set(snapshot["tag_ids"]["audit:duplicate"]) == duplicate_ids
    assert {tag for tag in snapshot["tags"] if not tag.startswith("audit:")} == {"reviewed"}
    assert "my-view" in snapshot["views"]

    findings = audited_dataset.findings()
    views = snapshot["views"]
    for finding in findings:
        slug = finding["fiftyone_view"]
        assert slug == f"{VIEW_PREFIX}{finding['finding_id']}"
        assert views[slug]["ids"] == list(finding["sample_ids"]), "a view keeps the finding's order"
    assert set(views[LABEL_ISSUE_VIEW]["ids"]) == flipped_ids
    assert views[f"{VIEW_PREFIX}by-cluster"]["grouped"] is True
    samples = pd.read_parquet(audited_dataset.run_dir / "samples.parquet")
    if "cluster_id" in samples.columns:  # the analysis clustered: its clusters are pushed as they are
        assert snapshot["clusters"] == dict(zip(samples["sample_id"], samples["cluster_id"].tolist(), strict=True))
    else:  # the push's own seeded KMeans over the embeddings
        assert len(set(snapshot["clusters"].values())) >= 2
    assert snapshot["brain_runs"] == [f"{RUN_KEY}_embeddings"]
    assert snapshot["workspaces"] == [f"{VIEW_PREFIX}embeddings"]

    run = snapshot["runs"][RUN_KEY]
    assert run["findings"] == findings, "the run's results round-trip the findings"
    assert run["metrics"]["issues"]["label_issue"]["count"] == len(flipped_ids)
    assert run["config"]["views"] == {f["finding_id"]: f["fiftyone_view"] for f in findings}
    assert set(run["config"]["fields"]) == {f for f in snapshot["fields"] if f.startswith("audit_")}

    record = json.loads((audited_dataset.run_dir / "fiftyone.json").read_text(encoding="utf-8"))
    assert record["dataset"] == audited_dataset.name
    assert record["created_dataset"] is False
    html = (audited_dataset.run_dir / "index.html").read_text(encoding="utf-8")
    assert f'href="http://localhost:5151/datasets/{audited_dataset.name}?view={LABEL_ISSUE_VIEW}"' in html


def test_samples_table_uses_fiftyone_ids_metadata_and_splits(audited_dataset: AuditedDataset) -> None:
    samples = pd.read_parquet(audited_dataset.run_dir / "samples.parquet")
    given = {row["filepath"]: row for row in audited_dataset.images.rows}
    assert set(samples["sample_id"]) == set(audited_dataset.ids.values())
    for row in samples.itertuples(index=False):
        assert audited_dataset.ids[row.filepath] == row.sample_id
        assert row.split == given[row.filepath]["split"]
        assert row.meta_scanner == given[row.filepath]["scanner"]
    assert not any(c.startswith("meta_audit") for c in samples.columns)
    embeddings = np.load(audited_dataset.run_dir / "fiftyone_embeddings.npy")
    assert embeddings.shape == (24, 12)


def test_rerun_is_idempotent(audited_dataset: AuditedDataset) -> None:
    before = _audit_state(audited_dataset.snapshot)
    codes, after = run_cli_then_snapshot([audited_dataset.audit_argv], audited_dataset.name, audited_dataset.env)
    assert codes == [0]
    assert _audit_state(after) == before
    assert after["n_samples"] == audited_dataset.snapshot["n_samples"]
    assert after["runs"][RUN_KEY]["findings"] == audited_dataset.findings()


def test_wrong_label_field_is_one_clear_line(audited_dataset: AuditedDataset, tmp_path: Path) -> None:
    argv = ["audit", "--fiftyone", audited_dataset.name, "--label-field", "scanner", "--out", str(tmp_path / "r")]
    result = run_cli(argv, audited_dataset.env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "'scanner' is not a Classification field" in result.stderr
    assert "ground_truth" in result.stderr
    assert not (tmp_path / "r").exists()


def test_database_that_cannot_start_is_one_clear_line(audited_dataset: AuditedDataset, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    env = fiftyone_env(blocker / "db")
    result = run_cli(["audit", "--fiftyone", audited_dataset.name, "--out", str(tmp_path / "r")], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "FIFTYONE_DATABASE_DIR" in result.stderr
    assert "--no-fiftyone" in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_http(url: str, app: subprocess.Popen[str], *, attempts: int = 90) -> None:
    """Poll `url` once a second until it answers (bounded: the App needs about 10 s); fail if the App exits."""
    for _ in range(attempts):
        if app.poll() is not None:
            pytest.fail(f"`auditor app` exited with {app.returncode}: {app.stdout.read() if app.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"the App never answered at {url}")


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1400,900",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`; `make browser`)"
)
def test_app_opens_the_label_issue_view(audited_dataset: AuditedDataset, tmp_path: Path) -> None:
    port = _free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "auditor", "app", str(audited_dataset.run_dir), "--remote", "--port", str(port)],
        env=audited_dataset.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the App server and mongod go with it
    )
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/", app)
        url = f"http://127.0.0.1:{port}/datasets/{audited_dataset.name}?view={LABEL_ISSUE_VIEW}"
        screenshot = tmp_path / "app.png"
        shot = _chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
        assert screenshot.is_file(), shot.stderr[-2000:]
        dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom").stdout
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the App screenshot is blank"
    flipped_ids = sorted(audited_dataset.ids[p] for p in audited_dataset.images.flipped)
    assert LABEL_ISSUE_VIEW in dom, "the saved view is not the one loaded"
    assert any(sample_id[:20] in dom for sample_id in flipped_ids), "the view's Select stage names a flagged sample"
    text = " ".join(t.strip() for t in re.findall(r">([^<>]*)<", dom) if t.strip())
    assert re.search(rf"(^| ){len(flipped_ids)} samples( |$)", text), "the grid should count the flagged samples"
    assert f"{RUN_KEY}_embeddings" in text, "the Embeddings panel lists the audit's plot"


def test_remove_cleans_up(audited_dataset: AuditedDataset) -> None:
    remove = ["fiftyone", "remove", str(audited_dataset.run_dir)]
    codes, after = run_cli_then_snapshot([remove], audited_dataset.name, audited_dataset.env)
    assert codes == [0]
    assert after["exists"], "the user's dataset stays"
    assert after["n_samples"] == 24
    assert set(after["fields"]) >= USER_FIELDS
    assert not [f for f in after["fields"] if f.startswith("audit_")]
    assert set(after["tags"]) == {"reviewed"}
    assert after["views"] == {"my-view": audited_dataset.snapshot["views"]["my-view"]}
    assert not [v for v in after["views"] if v.startswith(VIEW_PREFIX)]
    assert after["runs"] == {}
    assert after["brain_runs"] == []
    assert after["workspaces"] == []
    assert "auditor_fields_run" not in after["info"]
    assert all(f["fiftyone_view"] is None for f in audited_dataset.findings())
    assert not (audited_dataset.run_dir / "fiftyone.json").exists()
    assert "localhost:5151" not in (audited_dataset.run_dir / "index.html").read_text(encoding="utf-8")
