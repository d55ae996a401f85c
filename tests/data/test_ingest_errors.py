"""Bad input: unreadable images go to the errors table; unusable datasets raise one-line DataErrors."""

from __future__ import annotations

import pytest

from auditor.config import AuditConfig
from auditor.data import images as images_module
from auditor.data.sources import compute_sample_id, scan_source
from auditor.errors import ConfigError, DataError
from auditor.store import RunStore


def test_corrupt_truncated_and_zero_byte_images_are_recorded_not_fatal(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    good = (root / "b" / "img_00.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    samples, errors = ingest(root)
    assert len(samples) == 6
    assert list(errors.columns) == ["sample_id", "filepath", "stage", "error"]
    by_name = {p.rsplit("/", 1)[-1]: e for p, e in zip(errors["filepath"], errors["error"], strict=True)}
    assert set(by_name) == {"zero.png", "garbage.jpg", "truncated.png"}
    assert "empty (0 bytes)" in by_name["zero.png"]
    assert "not a readable image" in by_name["garbage.jpg"]
    assert "not a readable image" in by_name["truncated.png"]
    assert all("\n" not in e for e in errors["error"])
    assert (errors["stage"] == "ingest").all()
    assert set(errors["sample_id"]) == {
        compute_sample_id(r) for r in ["a/zero.png", "a/garbage.jpg", "b/truncated.png"]
    }
    assert not set(errors["sample_id"]) & set(samples["sample_id"])


def test_errors_table_is_typed_even_when_empty(tmp_path, make_imagefolder, ingest) -> None:
    _, errors = ingest(make_imagefolder(tmp_path / "data", {"a": 2, "b": 2}))
    assert errors.empty
    assert list(errors.columns) == ["sample_id", "filepath", "stage", "error"]
    assert all(errors[c].dtype.kind in "OT" or str(errors[c].dtype) == "str" for c in errors.columns)


def test_oversized_image_is_recorded_as_decompression_bomb(
    tmp_path, make_imagefolder, make_image, ingest, monkeypatch
) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    make_image(root / "a" / "huge.png", size=(40, 40))
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 1000)
    samples, errors = ingest(root)
    assert len(samples) == 4
    assert errors["filepath"].str.endswith("huge.png").all()
    assert len(errors) == 1
    assert "decompression-bomb" in errors.loc[0, "error"]


def test_class_with_a_single_image_names_class_and_file(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 3, "lonely": 1})
    with pytest.raises(
        DataError, match=r"class 'lonely' has a single readable image \(lonely/img_00\.png\).*add images"
    ):
        ingest(root)


def test_class_left_with_one_readable_image_is_a_data_error(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 3, "b": 2})
    (root / "b" / "img_01.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"class 'b' has a single readable image \(b/img_00\.png\)"):
        ingest(root)


def test_missing_data_path_is_a_data_error(tmp_path, ingest) -> None:
    with pytest.raises(DataError, match=r"data path '.*nowhere' .* does not exist"):
        ingest(tmp_path / "nowhere")


def test_folder_without_images_is_a_data_error(tmp_path, ingest) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty: no images found"):
        ingest(tmp_path / "empty", format="imagefolder")


def test_all_images_unreadable_is_a_data_error(tmp_path, ingest) -> None:
    for name in ("a/1.png", "a/2.png", "b/1.png"):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 3 image\(s\) could be read"):
        ingest(tmp_path / "d")


def test_unknown_format_is_refused(tmp_path, make_imagefolder) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2})
    with pytest.raises(ConfigError, match=r"--format must be one of"):
        AuditConfig(data=str(root), format="tfrecord")
    with pytest.raises(DataError, match=r"unknown --format 'tfrecord'"):
        scan_source(root, "tfrecord", RunStore(tmp_path / "run"))


def test_format_that_needs_a_file_or_folder_says_so(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"--format csv needs a \.csv manifest file"):
        ingest(root, format="csv")
    with pytest.raises(DataError, match=r"--format mini-imagenet needs a folder"):
        ingest(root / "a" / "img_00.png", format="mini-imagenet")
