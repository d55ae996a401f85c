"""Image-folder layouts: flat (auditor splits) and split folders (kept), hidden files, bad top-level folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from auditor.errors import DataError

EXPECTED_COLUMNS = [
    "sample_id",
    "filepath",
    "relpath",
    "split",
    "label",
    "width",
    "height",
    "mode",
    "file_bytes",
    "content_hash",
    "brightness",
]


def test_flat_imagefolder_gives_one_row_per_image_with_properties(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "flat", {"cat": 5, "dog": 4})
    samples, errors = ingest(root, format="imagefolder")
    assert list(samples.columns) == EXPECTED_COLUMNS
    assert len(samples) == 9
    assert errors.empty
    assert samples["relpath"].tolist() == sorted(samples["relpath"])
    assert samples.loc[0, "relpath"] == "cat/img_00.png"
    assert samples.loc[0, "filepath"] == str((root / "cat" / "img_00.png").resolve())
    assert samples.loc[0, "sample_id"] == hashlib.sha1(b"cat/img_00.png").hexdigest()[:16]
    assert samples["label"].value_counts().to_dict() == {"cat": 5, "dog": 4}
    assert set(samples["split"]) == {"train", "val"}
    assert (samples["width"] == 12).all()
    assert (samples["height"] == 10).all()
    assert (samples["mode"] == "L").all()
    first = root / "cat" / "img_00.png"
    assert samples.loc[0, "file_bytes"] == first.stat().st_size
    assert samples.loc[0, "content_hash"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert 0.0 < samples.loc[0, "brightness"] < 1.0


def test_split_folders_are_kept_and_aliases_normalised(tmp_path, make_imagefolder, ingest) -> None:
    root = tmp_path / "split"
    make_imagefolder(root, {"a": 3, "b": 2}, split="train")
    make_imagefolder(root, {"a": 1, "b": 1}, split="validation")
    make_imagefolder(root, {"a": 1, "b": 2}, split="test")
    samples, _ = ingest(root)
    counts = samples.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("test", "a"): 1,
        ("test", "b"): 2,
        ("train", "a"): 3,
        ("train", "b"): 2,
        ("val", "a"): 1,
        ("val", "b"): 1,
    }
    assert samples.loc[samples["split"] == "val", "relpath"].str.startswith("validation/").all()


def test_hidden_and_non_image_files_are_ignored_and_extensions_case_insensitive(
    tmp_path, make_imagefolder, make_image, ingest
) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    make_image(root / "a" / "UPPER.JPG", value=3, mode="RGB")
    make_image(root / "a" / ".hidden.png", value=4)
    make_image(root / ".cache" / "x" / "img.png", value=5)
    (root / "b" / "notes.txt").write_text("not an image")
    make_image(root / "loose.png", value=6)
    samples, errors = ingest(root)
    assert sorted(samples["relpath"]) == ["a/UPPER.JPG", "a/img_00.png", "a/img_01.png", "b/img_00.png", "b/img_01.png"]
    assert errors.empty


def test_unknown_top_level_folder_in_split_layout_is_a_data_error(tmp_path, make_imagefolder, ingest) -> None:
    root = tmp_path / "data"
    make_imagefolder(root, {"a": 2}, split="train")
    make_imagefolder(root, {"a": 2}, split="val")
    make_imagefolder(root, {"a": 2}, split="holdout")
    with pytest.raises(DataError, match=r"holdout.*train, val"):
        ingest(root)


def test_relative_data_path_is_resolved(tmp_path, make_imagefolder, ingest, monkeypatch) -> None:
    make_imagefolder(tmp_path / "rel", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    samples, _ = ingest(Path("rel"))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in samples["filepath"])
