"""Ingest of the real shared datasets (Omniglot small1 zip, mini-ImageNet subset); skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.realdata


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real dataset {path} is not present in the shared data folder")
    return path


def test_omniglot_small1_zip(shared_data_dir, ingest) -> None:
    archive = require(shared_data_dir / "omniglot" / "images_background_small1.zip")
    samples, errors = ingest(archive)
    assert errors.empty
    assert len(samples) == 2720
    assert samples["label"].nunique() == 136
    assert sorted(samples["meta_alphabet"].unique()) == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert samples.groupby("label").size().eq(20).all()
    assert sorted(samples["meta_drawer"].unique()) == list(range(1, 21))
    assert (samples["width"] == 105).all()
    assert (samples["height"] == 105).all()
    assert (samples["mode"] == "1").all()
    assert samples.groupby("label")["split"].agg(set).map(lambda s: s == {"train", "val"}).all()
    assert samples.loc[0, "relpath"] == "images_background_small1/Balinese/character01/0108_01.png"


def test_mini_imagenet_subset(shared_data_dir, ingest) -> None:
    root = require(shared_data_dir / "mini_imagenet")
    n_files = len(list((root / "images").glob("*.jpg")))
    samples, errors = ingest(root)
    assert len(samples) + len(errors) == 2016 == n_files
    assert len(samples) == 2016
    assert samples["label"].nunique() == 100
    assert samples["meta_original_split"].value_counts().to_dict() == {"train": 1290, "test": 400, "val": 326}
    assert samples.groupby("meta_original_split")["label"].nunique().to_dict() == {"train": 64, "val": 16, "test": 20}
    assert (samples["mode"] == "RGB").all()
    assert (samples["width"] == 84).all()
    assert samples.groupby("label")["split"].agg(set).map(lambda s: s == {"train", "val"}).all()
