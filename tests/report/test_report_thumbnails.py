"""Tests of thumbnails: sizes, crisp enlargement of tiny images, odd modes, placeholders, determinism."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor.report.thumbnails import _cached_thumbnail, load_thumbnail, placeholder_thumbnail


def _decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    image.load()
    return image


def _save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(pixels, mode=mode).save(path)
    return path


@pytest.mark.parametrize(
    ("source_size", "size", "expected"),
    [((8, 8), 96, (96, 96)), ((28, 28), 64, (56, 56)), ((300, 150), 64, (64, 32)), ((64, 10), 64, (64, 10))],
)
def test_thumbnail_fits_the_longest_side(
    tmp_path: Path, source_size: tuple[int, int], size: int, expected: tuple[int, int]
) -> None:
    width, height = source_size
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    thumb = load_thumbnail(_save(tmp_path / "a.png", pixels), size=size)
    assert thumb["readable"] is True
    assert (thumb["width"], thumb["height"]) == source_size
    assert _decode(thumb["src"]).size == expected


def test_tiny_image_is_enlarged_without_blurring(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    image = np.asarray(_decode(load_thumbnail(_save(tmp_path / "digit.png", pixels), size=64)["src"]))
    assert image.shape == (64, 64)
    assert np.array_equal(image[::8, ::8], pixels)  # every 8x8 block is one source pixel
    assert set(np.unique(image)) <= set(np.unique(pixels))


def test_sixteen_bit_image_is_stretched_to_eight_bits(tmp_path: Path) -> None:
    pixels = np.linspace(1000, 3000, 16 * 16).reshape(16, 16).astype(np.uint16)
    image = np.asarray(_decode(load_thumbnail(_save(tmp_path / "depth.png", pixels), size=16)["src"]))
    assert image.min() == 0
    assert image.max() == 255


def test_palette_image_with_transparency_keeps_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert _decode(load_thumbnail(tmp_path / "p.png")["src"]).mode == "RGBA"


def test_unreadable_and_missing_files_get_the_placeholder(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    placeholder = placeholder_thumbnail(64)
    for path in (broken, tmp_path / "missing.png"):
        thumb = load_thumbnail(path, size=64)
        assert thumb == placeholder
        assert thumb["readable"] is False
    assert _decode(placeholder["src"]).size == (64, 64)


def test_thumbnails_are_deterministic_and_follow_file_changes(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", np.full((5, 5, 3), 10, dtype=np.uint8))
    first = load_thumbnail(path)
    _cached_thumbnail.cache_clear()
    assert load_thumbnail(path) == first
    first["src"] = "mutated"  # callers get copies, never the cached object
    assert load_thumbnail(path)["src"] != "mutated"
    stat = path.stat()
    _save(path, np.full((5, 5, 3), 200, dtype=np.uint8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert np.asarray(_decode(load_thumbnail(path)["src"]))[0, 0, 0] == 200
