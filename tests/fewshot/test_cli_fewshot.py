"""`auditor audit --few-shot` end to end on a tiny synthetic Omniglot folder, its option errors, and one run on
the real shared Omniglot small1 zip (slow; skipped when the shared data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

import auditor
from auditor.cli import main
from auditor.errors import ConfigError
from auditor.fewshot.stage import class_fractions, nest_metrics

N_CLASSES, PER_CLASS, SIZE = 12, 4, 16
TINY = ["--tasks", "6", "--meta-steps", "5", "--no-fiftyone"]
TASK_COLUMNS = ["task_id", "support_ids", "query_ids", "classes", "score", "predicted_val_loss_change", "is_removed"]


def build_tiny_omniglot(root: Path) -> Path:
    """12 characters (2 alphabets x 6) x 4 drawers: 16x16 1-bit PNGs of one jittered 3-point stroke per character."""
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        alphabet = "Alpha" if c < N_CLASSES // 2 else "Beta"
        points = rng.integers(2, SIZE - 2, (3, 2))
        for d in range(PER_CLASS):
            image = Image.new("L", (SIZE, SIZE), 255)
            stroke = (points + rng.integers(-1, 2, (3, 2))).clip(0, SIZE - 1)
            ImageDraw.Draw(image).line([(int(x), int(y)) for x, y in stroke], fill=0, width=2)
            path = root / alphabet / f"character{c % 6 + 1:02d}" / f"{c + 1:04d}_{d + 1:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.convert("1").save(path)
    return root


@pytest.fixture(scope="module")
def omniglot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_omniglot(tmp_path_factory.mktemp("omni") / "images_background").parent


@pytest.fixture(scope="module")
def verified_run(omniglot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3-way 1-shot protonet audit with --verify (6 meta-training tasks, 5 meta-steps)."""
    out = tmp_path_factory.mktemp("runs") / "fewshot"
    args = ["audit", str(omniglot_dir), "--format", "omniglot", "--few-shot", "--ways", "3", "--shots", "1"]
    assert main([*args, "--queries", "3", "--verify", "--out", str(out), *TINY]) == 0
    return out


def test_few_shot_audit_writes_task_scores_and_instance_scores(verified_run: Path) -> None:
    tasks = pd.read_parquet(verified_run / "task_scores.parquet")
    assert list(tasks.columns) == TASK_COLUMNS
    assert len(tasks) == 6
    assert all(len(ids) == 3 for ids in tasks["support_ids"])  # 3 ways x 1 shot
    assert all(len(ids) == 9 for ids in tasks["query_ids"])  # 3 ways x 3 queries
    assert np.isfinite(tasks["score"]).all()
    samples = pd.read_parquet(verified_run / "samples.parquet")
    assert len(samples) == N_CLASSES * PER_CLASS
    # 12 classes split 6/3/3 into train/val/test pools: only the 24 images of training classes are in tasks
    # (harm_score), while the leave-one-out prototypes give every image a label_issue_score and suggested label
    in_tasks = samples["harm_score"].notna()
    assert in_tasks.sum() == 6 * PER_CLASS
    assert samples.loc[in_tasks, "label"].nunique() == 6
    assert samples["label_issue_score"].between(0, 1).all()  # 1 - p(given label), as in the main audit
    np.testing.assert_allclose(samples["label_issue_score"], 1 - np.exp(-samples["label_issue_loss"]))
    assert set(samples["suggested_label"]) <= set(samples["label"])
    assert int(samples["n_support"].sum()) == 6 * 3
    assert int(samples["n_query"].sum()) == 6 * 9
    for column in ("harm_score", "is_label_issue", "suggested_label", "is_harmful", "is_duplicate"):
        assert column in samples
    assert np.load(verified_run / "pixels.npy").shape == (48, 1, SIZE, SIZE)  # native 16 px kept (<= 32)


def test_few_shot_audit_json_nests_the_few_shot_metrics(verified_run: Path) -> None:
    metrics = json.loads((verified_run / "audit.json").read_text())["metrics"]
    fewshot = metrics["fewshot"]
    assert (fewshot["ways"], fewshot["shots"], fewshot["queries"], fewshot["n_train_tasks"]) == (3, 1, 3, 6)
    assert 0.0 <= fewshot["accuracy"] <= 1.0
    assert 0.0 <= fewshot["edit_vs_retrain"]["accuracy_gap"] <= 1.0
    assert fewshot["edit_vs_retrain"]["speedup"] > 0
    assert fewshot["removed"]["n_tasks"] == 2  # 40% of 6 tasks
    assert metrics["dataset"]["n_samples"] == 48
    findings = json.loads((verified_run / "findings.json").read_text())
    tasks = [f for f in findings if f["kind"] == "harmful_task"]
    if tasks:  # members of the listed tasks, support and query
        assert len(tasks[0]["sample_ids"]) <= 12 * len(tasks[0]["evidence"]["task_ids"])


def test_few_shot_report_has_the_section_with_task_strips(verified_run: Path) -> None:
    html = (verified_run / "index.html").read_text()
    assert 'id="fewshot"' in html
    assert "Most harmful tasks" in html
    assert 'id="fewshot-verify"' in html
    tasks = pd.read_parquet(verified_run / "task_scores.parquet")
    top = tasks.sort_values("score", ascending=False).iloc[0]
    if top["score"] > 0:
        assert f'data-task-id="{top["task_id"]}"' in html
        assert f'data-sample-id="{top["support_ids"][0]}"' in html


def test_python_api_resumes_the_same_few_shot_run(verified_run: Path, omniglot_dir: Path) -> None:
    result = auditor.audit(
        str(omniglot_dir),
        format="omniglot",
        few_shot=True,
        ways=3,
        shots=1,
        queries=3,
        verify=True,
        tasks=6,
        meta_steps=5,
        out=str(verified_run),
        fiftyone=False,
    )
    saved = json.loads((verified_run / "metrics.json").read_text())
    assert result.metrics["fewshot"] == saved["fewshot"]
    manifest = json.loads((verified_run / "manifest.json").read_text())
    assert manifest["stages_done"][:3] == ["ingest", "fewshot", "report"]


def test_ordinary_runs_have_no_few_shot_section(tmp_path: Path) -> None:
    from auditor.report.sections import FewShotSection
    from auditor.report.tables import AuditTables

    empty = pd.DataFrame({"sample_id": [], "filepath": [], "split": [], "label": []})
    tables = AuditTables(manifest={}, samples=empty, errors=empty, findings=[], metrics={"model": {}})
    assert not FewShotSection().applies(tables)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ways", "1"], "--ways must be at least 2"),
        (["--shots", "0"], "--shots must be at least 1"),
        (["--ways", "5"], "--ways 5 needs at least 15 classes"),
        (["--ways", "3", "--queries", "4"], "needs 5 images per class"),
    ],
)
def test_bad_few_shot_options_exit_2_with_one_line(
    omniglot_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    out = tmp_path / "bad"
    code = main(["audit", str(omniglot_dir), "--format", "omniglot", "--few-shot", *options, "--out", str(out), *TINY])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("auditor: error: ")
    assert message in lines[-1]
    assert not out.exists()  # a failed first run leaves no half-made run directory


def test_class_pools_give_each_pool_enough_classes() -> None:
    assert class_fractions(12, 3) == (0.5, 0.25, 0.25)
    assert class_fractions(100, 5) == (0.6, 0.2, 0.2)
    with pytest.raises(ConfigError, match="needs at least 15 classes"):
        class_fractions(12, 5)


def test_nest_metrics() -> None:
    nested = nest_metrics({"fewshot.accuracy": 0.5, "fewshot.edit_vs_retrain.speedup": 3.0})
    assert nested == {"fewshot": {"accuracy": 0.5, "edit_vs_retrain": {"speedup": 3.0}}}


@pytest.mark.slow
@pytest.mark.realdata
def test_few_shot_audit_on_real_omniglot_small1(shared_data_dir: Path, tmp_path: Path) -> None:
    archive = shared_data_dir / "omniglot" / "images_background_small1.zip"
    if not archive.exists():
        pytest.skip(f"real dataset {archive} is not present in the shared data folder")
    out = tmp_path / "small1"
    args = ["audit", str(archive), "--format", "omniglot", "--few-shot", "--ways", "5", "--shots", "1"]
    assert (
        main([*args, "--queries", "3", "--tasks", "20", "--meta-steps", "30", "--out", str(out), "--no-fiftyone"]) == 0
    )
    assert np.load(out / "pixels.npy", mmap_mode="r").shape[-2:] == (28, 28)  # 105 px characters -> 28
    metrics = json.loads((out / "audit.json").read_text())["metrics"]
    assert metrics["fewshot"]["accuracy"] > 0.3  # chance is 0.2
    tasks = pd.read_parquet(out / "task_scores.parquet")
    assert len(tasks) == 20
    assert np.isfinite(tasks["score"]).all()
    assert 'id="fewshot"' in (out / "index.html").read_text()
