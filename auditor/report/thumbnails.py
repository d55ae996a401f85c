"""Image file -> small PNG data URI for the offline HTML report; a fixed placeholder for unreadable files.

Deterministic (same file, same bytes out) and never raises on a bad image: the report must still render.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 64
"""Default longest side of a thumbnail, in pixels."""

_THUMBNAIL_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def load_thumbnail(path: str | Path, *, size: int = THUMBNAIL_SIZE) -> dict[str, Any]:
    """Thumbnail of the image at `path`: `{"src": data URI, "readable": bool, "width", "height"}`.

    The longest side becomes at most `size`. Images smaller than `size` are enlarged by a whole factor
    with nearest-neighbour sampling so that 28 px digits stay crisp; larger ones are reduced with a box
    filter. `width`/`height` are those of the original file (None when it cannot be read).
    """
    try:
        stat = os.stat(path)
    except OSError as error:
        logger.warning("Thumbnail placeholder for %s: %s", path, error)
        return _placeholder(size)
    return dict(_cached_thumbnail(str(path), size, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=2048)
def _cached_thumbnail(path: str, size: int, mtime_ns: int, n_bytes: int) -> dict[str, Any]:
    """Decode and encode once per (file, size, version of the file); the key's last two parts bust the cache."""
    del mtime_ns, n_bytes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                image.draft(None, (size, size))
                small = _shrink(_displayable(image), size)
    except (*_THUMBNAIL_ERRORS, Image.DecompressionBombWarning) as error:
        logger.warning("Thumbnail placeholder for unreadable image %s: %s", path, error)
        return _placeholder(size)
    return {"src": _png_data_uri(small), "readable": True, "width": width, "height": height}


def _displayable(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to L, RGB or RGBA; 16-bit and float images are stretched to their own range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("L", "RGB", "RGBA"):
        return image.copy()
    if image.mode in ("1",):
        return image.convert("L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _shrink(image: Image.Image, size: int) -> Image.Image:
    """Fit `image` into a `size` square: whole-factor nearest-neighbour up, box filter down."""
    width, height = image.size
    longest = max(width, height, 1)
    if longest <= size:
        factor = max(size // longest, 1)
        return image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    scale = size / longest
    target = (max(round(width * scale), 1), max(round(height * scale), 1))
    return image.resize(target, Image.Resampling.BOX)


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@lru_cache(maxsize=16)
def _placeholder_src(size: int) -> str:
    """A light grey square with a dark cross: recognisably 'no image' at a glance."""
    image = Image.new("RGB", (size, size), (226, 229, 234))
    draw = ImageDraw.Draw(image)
    margin = max(size // 4, 1)
    draw.line((margin, margin, size - margin, size - margin), fill=(120, 126, 138), width=max(size // 24, 1))
    draw.line((margin, size - margin, size - margin, margin), fill=(120, 126, 138), width=max(size // 24, 1))
    return _png_data_uri(image)


def placeholder_thumbnail(size: int = THUMBNAIL_SIZE) -> dict[str, Any]:
    """The thumbnail shown for a missing or unreadable file."""
    return _placeholder(size)


def _placeholder(size: int) -> dict[str, Any]:
    return {"src": _placeholder_src(size), "readable": False, "width": None, "height": None}
