"""--metadata: a filepath column joined onto relpath, snake_case meta_ columns, NaN for unmatched samples."""

from __future__ import annotations

import logging
import math

import pytest

from auditor.errors import DataError


def test_metadata_join_adds_sanitised_meta_columns(tmp_path, make_imagefolder, ingest, caplog) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    metadata = tmp_path / "meta.csv"
    metadata.write_text(
        "Scanner ID,filepath,Patient Age\n"
        "s1,a/img_00.png,30\n"
        "s2,./a/img_01.png,41\n"
        "s1,b/img_00.png,52\n"
        "s9,c/unknown.png,1\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="auditor.data.metadata"):
        samples, _ = ingest(root, metadata=str(metadata))
    assert [c for c in samples.columns if c.startswith("meta_")] == ["meta_scanner_id", "meta_patient_age"]
    by_path = samples.set_index("relpath")
    assert by_path.loc["a/img_01.png", "meta_scanner_id"] == "s2"
    assert by_path.loc["b/img_00.png", "meta_patient_age"] == 52
    assert math.isnan(by_path.loc["b/img_01.png", "meta_patient_age"])
    assert by_path["meta_scanner_id"].isna().sum() == 1
    assert "1 of 4 rows match no image" in caplog.text


def test_metadata_joins_onto_csv_manifest_relative_to_its_folder(tmp_path, make_image, ingest) -> None:
    for i in range(4):
        make_image(tmp_path / "imgs" / f"{i}.png", value=i * 50)
    manifest = tmp_path / "m.csv"
    manifest.write_text("filepath,label,site\n" + "".join(f"imgs/{i}.png,{'xy'[i % 2]},s{i}\n" for i in range(4)))
    metadata = tmp_path / "extra.csv"
    metadata.write_text("filepath,weight\n" + "".join(f"imgs/{i}.png,{i * 10}\n" for i in range(4)))
    samples, _ = ingest(manifest, metadata=str(metadata))
    assert samples["meta_site"].tolist() == ["s0", "s1", "s2", "s3"]
    assert samples["meta_weight"].tolist() == [0, 10, 20, 30]


def test_metadata_without_filepath_names_file_and_its_columns(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    metadata = tmp_path / "meta.csv"
    metadata.write_text("path,scanner\na/img_00.png,s1\n")
    with pytest.raises(DataError, match=rf"{metadata} has no 'filepath' column \(columns: path, scanner\)"):
        ingest(root, metadata=str(metadata))


def test_missing_metadata_file_is_a_data_error(tmp_path, make_imagefolder, ingest) -> None:
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(DataError, match=r"nope\.csv does not exist"):
        ingest(root, metadata=str(tmp_path / "nope.csv"))


def test_metadata_column_clashing_with_source_meta_is_a_data_error(tmp_path, make_image, ingest) -> None:
    for i in range(4):
        make_image(tmp_path / f"{i}.png", value=i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("filepath,label,site\n" + "".join(f"{i}.png,{'xy'[i % 2]},s\n" for i in range(4)))
    metadata = tmp_path / "extra.csv"
    metadata.write_text("filepath,Site\n0.png,t\n")
    with pytest.raises(DataError, match=r"extra\.csv: column\(s\) site clash with meta_site"):
        ingest(manifest, metadata=str(metadata))
