"""Omniglot layout from a folder and from a zip: labels, meta_alphabet/meta_drawer, one-time safe extraction."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from auditor.data.omniglot import extract_zip
from auditor.errors import DataError

ALPHABETS = {"Greek": 2, "Latin": 3}
DRAWERS = 3


def build_omniglot(root: Path, make_image) -> list[Path]:
    """Tiny Omniglot: 2 alphabets (2 and 3 characters) x 3 drawers of 1-bit PNGs under root/."""
    written = []
    char_id = 1
    for alphabet, n_chars in ALPHABETS.items():
        for c in range(1, n_chars + 1):
            for d in range(1, DRAWERS + 1):
                path = root / alphabet / f"character{c:02d}" / f"{char_id:04d}_{d:02d}.png"
                written.append(make_image(path, value=char_id * 20 + d, size=(9, 9), mode="1"))
            char_id += 1
    return written


def check_omniglot_samples(samples, prefix: str) -> None:
    assert len(samples) == 15
    assert samples["label"].nunique() == 5
    assert list(samples.columns[5:7]) == ["meta_alphabet", "meta_drawer"]
    first = samples.iloc[0]
    assert first["relpath"] == f"{prefix}Greek/character01/0001_01.png"
    assert (first["label"], first["meta_alphabet"], first["meta_drawer"]) == ("Greek/character01", "Greek", 1)
    assert samples["meta_drawer"].dtype.kind == "i"
    assert sorted(set(samples["meta_drawer"])) == [1, 2, 3]
    assert samples.groupby("meta_alphabet")["label"].nunique().to_dict() == {"Greek": 2, "Latin": 3}
    assert (samples["mode"] == "1").all()


def test_omniglot_folder_below_one_top_level_folder(tmp_path, make_image, ingest) -> None:
    build_omniglot(tmp_path / "omni" / "images_background", make_image)
    samples, errors = ingest(tmp_path / "omni")
    assert errors.empty
    check_omniglot_samples(samples, "images_background/")


def test_omniglot_zip_is_extracted_into_the_run_once(tmp_path, make_image, ingest) -> None:
    files = build_omniglot(tmp_path / "src" / "images_background_small", make_image)
    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in files:
            handle.write(path, path.relative_to(tmp_path / "src").as_posix())
        handle.writestr("__MACOSX/._junk.png", b"junk")
    samples, _ = ingest(archive, format="auto")
    check_omniglot_samples(samples, "images_background_small/")
    assert "/data/small/" in samples.loc[0, "filepath"]

    scratch = tmp_path / "scratch"
    target = extract_zip(archive, scratch)
    stamp = (target / "images_background_small/Greek/character01/0001_01.png").stat().st_mtime_ns
    assert extract_zip(archive, scratch) == target
    assert (target / "images_background_small/Greek/character01/0001_01.png").stat().st_mtime_ns == stamp
    assert not (target / "__MACOSX").exists()


@pytest.mark.parametrize("evil", ["../escape.png", "/abs/escape.png", "a/../../escape.png"])
def test_zip_slip_member_is_refused(tmp_path, evil) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("Greek/character01/0001_01.png", b"x")
        handle.writestr(evil, b"x")
    with pytest.raises(DataError, match=r"zip-slip"):
        extract_zip(archive, tmp_path / "scratch")
    assert not (tmp_path / "escape.png").exists()
    assert not (tmp_path / "scratch" / "evil").exists()


def test_corrupt_zip_is_a_data_error(tmp_path, ingest) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.zip is not a valid zip"):
        ingest(archive, format="omniglot")
