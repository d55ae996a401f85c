"""Near duplicates on images written in code: resized, re-encoded and shifted copies, leakage and label conflicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from auditor.analysis.duplicates import NearDuplicateDetector, group_near_duplicates
from auditor.analysis.image_properties import load_image_properties


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random colour texture: distinct images look alike only by chance."""
    noise = rng.normal(size=(size, size, 3))
    return np.clip(128 + 60 * ndimage.gaussian_filter(noise, sigma=(3, 3, 0)) / 0.1, 0, 255).astype(np.uint8)


def _write(path: Path, pixels: np.ndarray, **save: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return str(path)


def test_planted_near_duplicates_are_found_with_leakage_and_conflicts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    originals = [_texture(rng) for _ in range(60)]
    rows = [
        {"sample_id": f"o{i:02d}", "filepath": _write(tmp_path / f"o{i:02d}.png", img), "split": "train", "label": "a"}
        for i, img in enumerate(originals)
    ]
    resized = np.asarray(Image.fromarray(originals[0]).resize((40, 40), Image.Resampling.BILINEAR))
    shifted = np.pad(originals[2], ((2, 0), (2, 0), (0, 0)), mode="edge")[:64, :64]
    copies = [
        ("c-resized", resized, {}, "train", "a", 0),
        ("c-jpeg", originals[1], {"format": "JPEG", "quality": 50}, "val", "a", 1),  # leakage
        ("c-shift", shifted, {}, "train", "b", 2),  # label conflict
    ]
    for name, pixels, save, split, label, _ in copies:
        suffix = ".jpg" if save else ".png"
        rows.append(
            {
                "sample_id": name,
                "filepath": _write(tmp_path / f"{name}{suffix}", pixels, **save),
                "split": split,
                "label": label,
            }
        )
    samples = pd.DataFrame(rows)
    samples["content_hash"] = samples["sample_id"]
    _, descriptors = load_image_properties(samples["filepath"].tolist())
    detector = NearDuplicateDetector().fit(descriptors, samples["content_hash"].to_numpy())
    groups = {tuple(g.sample_ids): g for g in group_near_duplicates(samples, detector.pairs_)}
    assert set(groups) == {("c-resized", "o00"), ("c-jpeg", "o01"), ("c-shift", "o02")}
    assert groups[("c-jpeg", "o01")].cross_split
    assert groups[("c-jpeg", "o01")].match == "near"
    assert groups[("c-shift", "o02")].conflicting_labels
    assert not groups[("c-shift", "o02")].cross_split
    assert not groups[("c-resized", "o00")].cross_split
    assert not groups[("c-resized", "o00")].conflicting_labels
    assert detector.threshold_ < np.nanmedian(detector.nn_distance_)


def test_exact_copies_join_their_near_group_and_flat_images_pair_by_level() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(100, 30, (32, 32)).astype(np.float32)
    images = [base, base, base + 0.5, *(rng.normal(100, 30, (32, 32)).astype(np.float32) for _ in range(20))]
    images += [
        np.full((32, 32), 250.0, dtype=np.float32),
        np.full((32, 32), 252.0, dtype=np.float32),
        np.zeros((32, 32), dtype=np.float32),
    ]
    descriptors = np.stack(images)
    hashes = np.array(["h0", "h0", *[f"u{i}" for i in range(len(images) - 2)]], dtype=object)
    samples = pd.DataFrame(
        {"sample_id": [f"s{i:02d}" for i in range(len(images))], "content_hash": hashes, "split": "train", "label": "a"}
    )
    pairs = NearDuplicateDetector().fit(descriptors, hashes).pairs_
    groups = [g.sample_ids for g in group_near_duplicates(samples, pairs)]
    assert ["s00", "s01", "s02"] in groups  # the exact pair s00/s01 and the near copy s02, one group
    assert ["s23", "s24"] in groups  # two white blanks; the black one is not their duplicate
    assert len(groups) == 2


def test_one_row_per_block_finds_the_same_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The candidate search is blocked by bytes, so 100k images stay in memory; the blocking must not change answers.
    import auditor.analysis.duplicates as duplicates

    rng = np.random.default_rng(1)
    originals = [_texture(rng, 32) for _ in range(30)]
    paths = [_write(tmp_path / f"o{i:02d}.png", img) for i, img in enumerate(originals)]
    paths.append(_write(tmp_path / "copy.jpg", originals[3], format="JPEG", quality=60))
    _, descriptors = load_image_properties(paths)
    hashes = np.array([f"h{i}" for i in range(len(paths))])
    default = NearDuplicateDetector().fit(descriptors, hashes).pairs_
    monkeypatch.setattr(duplicates, "_BLOCK_BYTES", 1)
    one_row = NearDuplicateDetector().fit(descriptors, hashes).pairs_
    pd.testing.assert_frame_equal(default, one_row)
    assert ((default["first"] == 3) & (default["second"] == 30)).any()


def test_the_unshifted_candidate_search_for_large_datasets_still_finds_copies(tmp_path: Path) -> None:
    # Above shift_search_limit images only unshifted summaries are compared (9x cheaper); resized, re-encoded and
    # one-pixel-shifted copies still agree there, and the verification step searches the shifts.
    rng = np.random.default_rng(2)
    originals = [_texture(rng, 32) for _ in range(30)]
    paths = [_write(tmp_path / f"o{i:02d}.png", img) for i, img in enumerate(originals)]
    shifted = np.pad(originals[5], ((1, 0), (1, 0), (0, 0)), mode="edge")[:32, :32]
    paths.append(_write(tmp_path / "jpeg.jpg", originals[3], format="JPEG", quality=60))
    paths.append(_write(tmp_path / "shift.png", shifted))
    _, descriptors = load_image_properties(paths)
    hashes = np.array([f"h{i}" for i in range(len(paths))])
    pairs = NearDuplicateDetector(shift_search_limit=0).fit(descriptors, hashes).pairs_
    found = set(zip(pairs["first"], pairs["second"], strict=True))
    assert {(3, 30), (5, 31)} <= found
