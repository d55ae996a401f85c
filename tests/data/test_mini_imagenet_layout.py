"""Mini-ImageNet layout: pooled class-disjoint splits, meta_original_split, a new stratified split."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import DataError

SPLIT_CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04"], "test": ["n05", "n06"]}
PER_CLASS = 5


def build_mini_imagenet(root: Path, make_image) -> Path:
    """images/<wnid><NNNN>.jpg plus train/val/test.csv (filename,label) with class-disjoint splits."""
    for split, classes in SPLIT_CLASSES.items():
        lines = ["filename,label"]
        for ci, wnid in enumerate(classes):
            for i in range(PER_CLASS):
                name = f"{wnid}{i:08d}.jpg"
                make_image(root / "images" / name, value=ci * 30 + i * 7, size=(16, 16), mode="RGB")
                lines.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mini_imagenet_pools_splits_and_resplits_stratified(tmp_path, make_image, ingest) -> None:
    root = build_mini_imagenet(tmp_path / "mini", make_image)
    samples, errors = ingest(root, val_fraction=0.2)
    assert errors.empty
    assert len(samples) == 30
    assert samples.columns[5] == "meta_original_split"
    assert samples.loc[0, "relpath"] == "images/n0100000000.jpg"
    original = samples.groupby("label")["meta_original_split"].first().to_dict()
    assert original == {w: s for s, ws in SPLIT_CLASSES.items() for w in ws}
    assert samples.groupby(["label", "split"]).size().unstack().to_dict() == {
        "train": dict.fromkeys(["n01", "n02", "n03", "n04", "n05", "n06"], 4),
        "val": dict.fromkeys(["n01", "n02", "n03", "n04", "n05", "n06"], 1),
    }
    assert (samples["mode"] == "RGB").all()


def test_mini_imagenet_file_listed_twice_is_a_data_error(tmp_path, make_image, ingest) -> None:
    root = build_mini_imagenet(tmp_path / "mini", make_image)
    with (root / "test.csv").open("a") as handle:
        handle.write("n0100000000.jpg,n01\n")
    with pytest.raises(
        DataError, match=r"test\.csv, line 12: n0100000000\.jpg is already listed at .*train\.csv, line 2"
    ):
        ingest(root, format="mini-imagenet")


def test_mini_imagenet_traversal_filename_is_a_data_error(tmp_path, make_image, ingest) -> None:
    root = build_mini_imagenet(tmp_path / "mini", make_image)
    with (root / "val.csv").open("a") as handle:
        handle.write("../train.csv,n04\n")
    with pytest.raises(DataError, match=r"val\.csv, line 7: filename '\.\./train\.csv' is not inside"):
        ingest(root)
