"""CSV manifests: paths relative to the CSV's folder, splits, meta_ columns, and every manifest error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from auditor.errors import DataError


def write_manifest_dataset(root: Path, make_image, rows: list[str], header: str) -> Path:
    """Images img0..img5 under root/imgs/ and a manifest root/manifest.csv with the given rows."""
    for i in range(6):
        make_image(root / "imgs" / f"img{i}.png", value=i * 40)
    manifest = root / "manifest.csv"
    manifest.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def test_manifest_with_split_and_metadata_columns(tmp_path, make_image, ingest) -> None:
    rows = [
        "imgs/img0.png,cat,train,site A,1.5,3",
        "./imgs/img1.png,cat,train,site B,2.5,4",
        "imgs/img2.png,cat,val,site A,,5",
        "imgs/img3.png,dog,train,site B,0.5,6",
        f"{(tmp_path / 'imgs' / 'img4.png').resolve()},dog,valid,site A,1.0,7",
        "imgs/img5.png,dog,test,site B,1.0,8",
    ]
    manifest = write_manifest_dataset(tmp_path, make_image, rows, "FilePath,Label,split,Site Name,exposureTime,count")
    samples, errors = ingest(manifest)
    assert errors.empty
    meta = ["meta_site_name", "meta_exposure_time", "meta_count"]
    assert list(samples.columns[:8]) == ["sample_id", "filepath", "relpath", "split", "label", *meta]
    assert samples["relpath"].tolist() == [f"imgs/img{i}.png" for i in range(6)]
    assert samples["split"].tolist() == ["train", "train", "val", "train", "val", "test"]
    assert samples["label"].tolist() == ["cat", "cat", "cat", "dog", "dog", "dog"]
    assert samples["meta_site_name"].tolist() == ["site A", "site B", "site A", "site B", "site A", "site B"]
    assert samples["meta_count"].dtype.kind == "i"
    assert samples["meta_count"].tolist() == [3, 4, 5, 6, 7, 8]
    assert samples["meta_exposure_time"].dtype.kind == "f"
    assert math.isnan(samples.loc[2, "meta_exposure_time"])


def test_manifest_without_split_gets_a_stratified_split(tmp_path, make_image, ingest) -> None:
    rows = [f"imgs/img{i}.png,{'ab'[i % 2]}" for i in range(6)]
    samples, _ = ingest(write_manifest_dataset(tmp_path, make_image, rows, "filepath,label"))
    per_class = samples.groupby("label")["split"].agg(set).to_dict()
    assert per_class == {"a": {"train", "val"}, "b": {"train", "val"}}


def test_missing_image_in_manifest_goes_to_errors_table(tmp_path, make_image, ingest) -> None:
    rows = [f"imgs/img{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["imgs/gone.png,a"]
    samples, errors = ingest(write_manifest_dataset(tmp_path, make_image, rows, "filepath,label"))
    assert len(samples) == 6
    assert errors["filepath"].tolist() == [str((tmp_path / "imgs" / "gone.png").resolve())]
    assert "not found" in errors.loc[0, "error"]
    assert errors.loc[0, "stage"] == "ingest"


@pytest.mark.parametrize("bad_path", ["../outside.png", "imgs/../../outside.png", "/etc/passwd"])
def test_path_outside_the_csv_folder_is_a_data_error_naming_the_row(tmp_path, make_image, ingest, bad_path) -> None:
    rows = ["imgs/img0.png,a", "imgs/img1.png,a", f"{bad_path},b"]
    manifest = write_manifest_dataset(tmp_path / "m", make_image, rows, "filepath,label")
    with pytest.raises(DataError, match=r"manifest\.csv, line 4.*not inside the CSV's folder") as info:
        ingest(manifest)
    assert bad_path in str(info.value)


@pytest.mark.parametrize(("header", "missing"), [("path,label", "filepath"), ("filepath,class", "label")])
def test_manifest_without_required_column_names_file_and_columns(tmp_path, make_image, ingest, header, missing) -> None:
    manifest = write_manifest_dataset(tmp_path, make_image, ["imgs/img0.png,a"], header)
    with pytest.raises(DataError, match=rf"{manifest}.*no '{missing}' column \(columns: {header.replace(',', ', ')}\)"):
        ingest(manifest)


def test_duplicate_rows_for_one_file_name_both_lines(tmp_path, make_image, ingest) -> None:
    rows = ["imgs/img0.png,a", "imgs/img1.png,a", "imgs/./img0.png,b"]
    manifest = write_manifest_dataset(tmp_path, make_image, rows, "filepath,label")
    with pytest.raises(DataError, match=r"lines 2 and 4 both list imgs/img0.png"):
        ingest(manifest)


def test_unknown_split_value_names_value_line_and_allowed_values(tmp_path, make_image, ingest) -> None:
    rows = ["imgs/img0.png,a,train", "imgs/img1.png,a,holdout"]
    manifest = write_manifest_dataset(tmp_path, make_image, rows, "filepath,label,split")
    with pytest.raises(DataError, match=r"line 3 \(imgs/img1.png\): split 'holdout' is not allowed; use one of train"):
        ingest(manifest)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "is empty"), (b"\xff\xfe\x00\x81garbage\x00\n\x93", "not UTF-8"), (b'filepath,label\n"a.png,b\n', "valid")],
)
def test_unreadable_csv_is_a_data_error(tmp_path, ingest, content, reason) -> None:
    manifest = tmp_path / "broken.csv"
    manifest.write_bytes(content)
    with pytest.raises(DataError, match=reason) as info:
        ingest(manifest)
    assert str(manifest) in str(info.value)
