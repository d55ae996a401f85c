"""Splits and ids: seeded stratified split, determinism, source splits kept, no-train refused, val carved."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from auditor.data.splits import compute_stratified_split
from auditor.errors import DataError


def test_split_and_ids_are_deterministic_and_seeded(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 10, "b": 7, "c": 2})
    first, _ = ingest(root, seed=3)
    again, _ = ingest(root, seed=3)
    other, _ = ingest(root, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert first["sample_id"].tolist() == other["sample_id"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    assert first.loc[0, "sample_id"] == hashlib.sha1(b"a/img_00.png").hexdigest()[:16]


def test_stratified_split_keeps_every_class_in_train_and_val(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 10, "b": 7, "c": 2})
    samples, _ = ingest(root, val_fraction=0.2)
    val_counts = samples[samples["split"] == "val"].groupby("label").size().to_dict()
    train_counts = samples[samples["split"] == "train"].groupby("label").size().to_dict()
    assert val_counts == {"a": 2, "b": 1, "c": 1}
    assert train_counts == {"a": 8, "b": 6, "c": 1}


def test_stratified_split_is_stable_when_another_class_grows() -> None:
    def frame(n_b: int) -> pd.DataFrame:
        rows = [("a", f"a{i}") for i in range(6)] + [("b", f"b{i}") for i in range(n_b)]
        return pd.DataFrame(rows, columns=["label", "sample_id"])

    small = compute_stratified_split(frame(3), seed=0, val_fraction=0.5)
    large = compute_stratified_split(frame(9), seed=0, val_fraction=0.5)
    assert small[:6].tolist() == large[:6].tolist()
    assert (small[:6] == "val").sum() == 3


def test_split_without_val_carves_val_from_train_and_keeps_test(tmp_path, make_imagefolder, ingest) -> None:
    root = tmp_path / "data"
    make_imagefolder(root, {"a": 5, "b": 5}, split="train")
    make_imagefolder(root, {"a": 2, "b": 2}, split="test")
    samples, _ = ingest(root, val_fraction=0.2)
    counts = samples.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("test", "a"): 2,
        ("test", "b"): 2,
        ("train", "a"): 4,
        ("train", "b"): 4,
        ("val", "a"): 1,
        ("val", "b"): 1,
    }
    assert samples.loc[samples["split"] == "val", "relpath"].str.startswith("train/").all()


def test_splits_without_train_are_a_data_error(tmp_path, make_imagefolder, ingest) -> None:
    root = tmp_path / "data"
    make_imagefolder(root, {"a": 2, "b": 2}, split="val")
    make_imagefolder(root, {"a": 2, "b": 2}, split="test")
    with pytest.raises(DataError, match=r"no 'train' rows"):
        ingest(root)


def test_manifest_with_blank_split_for_some_rows_is_a_data_error(tmp_path, make_image, ingest) -> None:
    for i in range(4):
        make_image(tmp_path / f"{i}.png", value=i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("filepath,label,split\n0.png,a,train\n1.png,a,\n2.png,b,train\n3.png,b,val\n")
    with pytest.raises(DataError, match=r"m\.csv, line 3 \(1\.png\): split '' is not allowed"):
        ingest(manifest)
