"""The digits demo: planted label flips, scanner_b artifact group and duplicates; determinism and idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from auditor.data.demo import build_demo_dataset

N_DIGITS = 1797


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "digits", seed=0)


@pytest.fixture(scope="module")
def planted(demo_root) -> dict:
    return json.loads((demo_root / "planted.json").read_text())


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_layout_and_counts(demo_root, planted) -> None:
    pngs = sorted(p.relative_to(demo_root).as_posix() for p in demo_root.rglob("*.png"))
    assert len(pngs) == N_DIGITS + 6 == planted["n_images"]
    assert {p.split("/")[0] for p in pngs} == {"train", "val"}
    assert {p.split("/")[1] for p in pngs} == {str(d) for d in range(10)}
    with Image.open(demo_root / pngs[0]) as image:
        assert (image.size, image.mode) == ((16, 16), "L")
    metadata = (demo_root / "metadata.csv").read_text().splitlines()
    assert metadata[0] == "filepath,scanner"
    assert len(metadata) == len(pngs) + 1
    n_train = sum(p.startswith("train/") for p in pngs)
    assert n_train == 1438
    assert len(planted["label_flips"]) == round(0.05 * n_train) == 72


def test_label_flips_sit_in_a_wrong_class_folder(demo_root, planted) -> None:
    targets = load_digits().target
    for flip in planted["label_flips"]:
        split, folder, name = flip["relpath"].split("/")
        index = int(name.removeprefix("digit_").removesuffix(".png"))
        assert split == "train"
        assert (demo_root / flip["relpath"]).is_file()
        assert folder == flip["given_label"] != flip["true_label"] == str(targets[index])


def test_scanner_b_carries_the_artifact_and_correlates_with_classes(demo_root, planted) -> None:
    group = planted["artifact_group"]
    assert (group["column"], group["value"], group["classes"]) == ("meta_scanner", "scanner_b", ["0", "1", "7"])
    marked = set(group["relpaths"])
    rows = [line.split(",") for line in (demo_root / "metadata.csv").read_text().splitlines()[1:]]
    assert marked == {path for path, scanner in rows if scanner == "scanner_b"}
    for relpath, _ in rows[::25]:
        corner = np.asarray(Image.open(demo_root / relpath))[:3, :3]
        assert (corner == 255).all() == (relpath in marked)
    targets = load_digits().target
    true_label = {f"digit_{i:04d}.png": str(t) for i, t in enumerate(targets)}
    in_classes = [true_label[p.rsplit("/", 1)[-1][-14:]] in group["classes"] for p, _ in rows]
    is_b = [p in marked for p, _ in rows]
    rate_in = np.mean([b for b, c in zip(is_b, in_classes, strict=True) if c])
    rate_out = np.mean([b for b, c in zip(is_b, in_classes, strict=True) if not c])
    assert rate_in > 0.6
    assert rate_out < 0.1


def test_duplicates_are_byte_identical_cross_split_copies(demo_root, planted) -> None:
    assert len(planted["duplicates"]) == 6
    flipped = {f["relpath"] for f in planted["label_flips"]}
    for dup in planted["duplicates"]:
        assert dup["cross_split"] is True
        assert dup["original"].startswith("train/")
        assert dup["copy"].startswith("val/")
        assert dup["original"].split("/")[1] == dup["copy"].split("/")[1]
        assert dup["original"] not in flipped
        assert (demo_root / dup["original"]).read_bytes() == (demo_root / dup["copy"]).read_bytes()


def test_demo_is_deterministic_and_idempotent(demo_root, tmp_path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()}
    assert build_demo_dataset(demo_root, seed=0) == demo_root
    assert {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()} == before

    copy = build_demo_dataset(tmp_path / "again", seed=0)
    assert all_files(copy) == all_files(demo_root)

    other = build_demo_dataset(tmp_path / "again", seed=1)
    assert json.loads((other / "planted.json").read_text())["seed"] == 1
    assert all_files(other) != all_files(demo_root)


def test_incomplete_demo_is_rebuilt(tmp_path) -> None:
    root = build_demo_dataset(tmp_path / "d", seed=2)
    (root / "planted.json").unlink()
    (root / "train" / "0").rename(root / "stray")
    build_demo_dataset(root, seed=2)
    assert (root / "planted.json").is_file()
    assert sum(1 for _ in (root / "train").rglob("*.png")) + sum(1 for _ in (root / "val").rglob("*.png")) == 1803


def test_demo_ingests_with_its_metadata(demo_root, planted, ingest) -> None:
    samples, errors = ingest(demo_root, format="demo")
    assert errors.empty
    assert len(samples) == 1803
    marked = set(samples.loc[samples["meta_scanner"] == "scanner_b", "relpath"])
    assert marked == set(planted["artifact_group"]["relpaths"])
    assert samples["split"].value_counts().to_dict() == {"train": 1438, "val": 365}
    same_bytes = samples[samples["content_hash"].duplicated(keep=False)].groupby("content_hash")["relpath"]
    assert sorted(tuple(sorted(g)) for _, g in same_bytes) == sorted(
        (d["original"], d["copy"]) for d in planted["duplicates"]
    )
