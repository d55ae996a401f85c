"""Audits of the real shared datasets (skipped, saying why, when ../shared/data is absent).

Omniglot small1 with 10% of its images moved to other characters: the label-issue score must rank
the moved files first (AUROC >= 0.90, the Foundation acceptance figure). Mini-ImageNet: the audit runs
end to end on 84x84 colour JPEGs through the small-ResNet proxy.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

import auditor
from auditor.data.planting import plant_label_noise_in_folder

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_omniglot_moved_labels_are_found(shared_data_dir: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(shared_data_dir / "omniglot" / "images_background_small1.zip") as archive:
        archive.extractall(tmp_path / "omniglot")
    data = tmp_path / "omniglot" / "images_background_small1"
    moves = plant_label_noise_in_folder(data, rate=0.10, seed=0, class_depth=2)
    result = auditor.audit(str(data), format="omniglot", out=str(tmp_path / "run"), fiftyone=False)
    samples = result.samples
    assert len(samples) == 2720
    assert {"meta_alphabet", "meta_drawer"} <= set(samples.columns)
    moved = samples["relpath"].isin({m["relpath"] for m in moves})
    assert moved.sum() == 272
    auroc = roc_auc_score(moved, samples["label_issue_score"])
    assert auroc >= 0.90, auroc
    flagged = samples["is_label_issue"].astype(bool)
    assert (flagged & moved).sum() / flagged.sum() > 0.5  # most flags are real
    html = (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= 20  # thumbnails of the suspected mislabels


def test_mini_imagenet_audit_runs_end_to_end(shared_data_dir: Path, tmp_path: Path) -> None:
    result = auditor.audit(
        str(shared_data_dir / "mini_imagenet"),
        format="mini-imagenet",
        out=str(tmp_path / "run"),
        epochs=2,
        checkpoints=2,
        fiftyone=False,
    )
    samples = result.samples
    assert len(samples) == 2016
    assert samples["label"].nunique() == 100
    assert set(samples["meta_original_split"]) == {"train", "val", "test"}
    assert samples[["loss", "self_influence", "label_issue_score"]].notna().all().all()
    manifest = (tmp_path / "run" / "model" / "models.json").read_text()
    assert '"resnet"' in manifest  # 84 px colour images get the small ResNet
    assert (tmp_path / "run" / "index.html").is_file()
