"""--format auto: each layout is recognised; anything else is a DataError that lists the layouts."""

from __future__ import annotations

import zipfile

import pytest

from auditor.data.detect import detect_format
from auditor.errors import DataError


def test_detects_imagefolder_flat_and_split(tmp_path, make_imagefolder) -> None:
    assert detect_format(make_imagefolder(tmp_path / "flat", {"a": 1})) == "imagefolder"
    assert detect_format(make_imagefolder(tmp_path / "split", {"a": 1}, split="train")) == "imagefolder"


def test_detects_omniglot_folder_and_zip(tmp_path, make_image) -> None:
    path = make_image(tmp_path / "omni" / "top" / "Greek" / "character01" / "0001_01.png")
    assert detect_format(tmp_path / "omni") == "omniglot"
    archive = tmp_path / "o.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(path, "Greek/character01/0001_01.png")
    assert detect_format(archive) == "omniglot"


def test_class_folder_named_like_a_character_is_not_omniglot_without_drawing_names(tmp_path, make_image) -> None:
    make_image(tmp_path / "d" / "train" / "character01" / "photo.png")
    assert detect_format(tmp_path / "d") == "imagefolder"


def test_detects_mini_imagenet_and_csv(tmp_path, make_image) -> None:
    make_image(tmp_path / "mini" / "images" / "n01.jpg", mode="RGB")
    (tmp_path / "mini" / "train.csv").write_text("filename,label\nn01.jpg,n01\n")
    assert detect_format(tmp_path / "mini") == "mini-imagenet"
    assert detect_format(tmp_path / "mini" / "train.csv") == "csv"


def test_unrecognised_folder_lists_layouts_and_suggests_format(tmp_path, make_image) -> None:
    make_image(tmp_path / "loose" / "only.png")
    with pytest.raises(DataError, match=r"loose: cannot tell the dataset layout; expected an Omniglot.*--format"):
        detect_format(tmp_path / "loose")


def test_empty_folder_says_no_images(tmp_path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no image files found"):
        detect_format(tmp_path / "empty")


def test_other_file_types_are_refused(tmp_path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match=r"data\.txt is a file but not a \.csv manifest or \.zip"):
        detect_format(tmp_path / "data.txt")
    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("cats/1.png", b"x")
    with pytest.raises(DataError, match=r"plain\.zip: zip archives are read only in the Omniglot layout"):
        detect_format(archive)
