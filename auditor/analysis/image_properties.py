"""Per-image properties (visual complexity, contrast, colour) and a small perceptual descriptor, read from the files.

Used by the driver analysis, the image-issue detector and the near-duplicate detector. Reads image files;
writes nothing. Images larger than `MAX_SIDE` are reduced first, so figures of very large images are
those of their `MAX_SIDE` rendition (the comparison between images stays meaningful).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from PIL import Image, ImageFilter
from scipy import ndimage

from auditor.data.images import GRAYSCALE_MODES, ImageReadError, read_image, to_standard_mode

logger = logging.getLogger(__name__)

MAX_SIDE = 256
DESCRIPTOR_SIZE = 32
"""Side of the grey descriptor the near-duplicate detector compares (blurred, any aspect squashed to square)."""
PNG_OVERHEAD_BYTES = 57
"""Bytes of a minimal PNG that are not image data (signature, IHDR, IDAT and IEND framing), left out of the size."""
EDGE_THRESHOLD = 0.1
"""Sobel gradient magnitude (as a fraction of the largest possible) above which a pixel counts as an edge."""

PNG_BITS_PER_PIXEL = "png_bits_per_pixel"
EDGE_DENSITY = "edge_density"
ENTROPY = "entropy"
CONTRAST = "contrast"
COLOURFULNESS = "colourfulness"
IS_COLOUR_FILE = "is_colour_file"
N_PIXELS = "n_pixels"
ASPECT_RATIO = "aspect_ratio"
PROPERTY_COLUMNS = (PNG_BITS_PER_PIXEL, EDGE_DENSITY, ENTROPY, CONTRAST, COLOURFULNESS, IS_COLOUR_FILE)
"""Columns `load_image_properties` returns (plus N_PIXELS and ASPECT_RATIO, derived from width and height)."""


def compute_image_properties(image: Image.Image) -> tuple[dict[str, float | bool], np.ndarray]:
    """Properties of one decoded image and its [DESCRIPTOR_SIZE, DESCRIPTOR_SIZE] float32 grey descriptor.

    `png_bits_per_pixel`: lossless PNG size of the 8-bit grey image per pixel (visual complexity: flat
    images compress to almost nothing, busy ones do not); `edge_density`: share of edge pixels (Sobel);
    `entropy`: Shannon entropy of the grey histogram in bits (0 for a constant image); `contrast`: grey
    standard deviation in [0, 0.5]; `colourfulness`: mean spread between the largest and smallest
    channel in [0, 1] (0 for grey pixels, whatever the file's mode); `is_colour_file`: the file's mode
    can hold colour.
    """
    is_colour_file = image.mode not in GRAYSCALE_MODES
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
    grey_image = to_standard_mode(image, 1)
    grey = np.asarray(grey_image, dtype=np.float64)
    buffer = io.BytesIO()
    grey_image.save(buffer, format="PNG", compress_level=6)
    histogram = np.bincount(grey.astype(np.uint8).ravel(), minlength=256) / max(grey.size, 1)
    nonzero = histogram[histogram > 0]
    magnitude = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1)) / (4 * np.sqrt(2) * 255)
    if is_colour_file:
        rgb = np.asarray(to_standard_mode(image, 3), dtype=np.float64)
        colourfulness = float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255)
    else:
        colourfulness = 0.0
    properties: dict[str, float | bool] = {
        PNG_BITS_PER_PIXEL: 8 * max(len(buffer.getvalue()) - PNG_OVERHEAD_BYTES, 0) / max(grey.size, 1),
        EDGE_DENSITY: float((magnitude > EDGE_THRESHOLD).mean()),
        ENTROPY: float(-(nonzero * np.log2(nonzero)).sum()),
        CONTRAST: float(grey.std() / 255),
        COLOURFULNESS: colourfulness,
        IS_COLOUR_FILE: is_colour_file,
    }
    return properties, compute_descriptor(grey_image)


def compute_descriptor(grey_image: Image.Image) -> np.ndarray:
    """The image as a blurred DESCRIPTOR_SIZE-square grey array (float32, 0..255), robust to re-encoding."""
    size = (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)
    shrinking = grey_image.width >= DESCRIPTOR_SIZE and grey_image.height >= DESCRIPTOR_SIZE
    small = grey_image.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    small = small.filter(ImageFilter.GaussianBlur(radius=0.8))
    return np.asarray(small, dtype=np.float32)


def load_image_properties(
    filepaths: Sequence[str], widths: ArrayLike | None = None, heights: ArrayLike | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Properties (one row per path, in order) and descriptors [N, 32, 32] of every file.

    A file that can no longer be read gets NaN properties and a NaN descriptor (logged, never raised:
    ingest already recorded the files it could not read). With `widths`/`heights`, `n_pixels` and
    `aspect_ratio` (width / height) are added.
    """
    rows: list[dict[str, float | bool]] = []
    descriptors = np.full((len(filepaths), DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), np.nan, dtype=np.float32)
    for index, filepath in enumerate(filepaths):
        try:
            image, _ = read_image(Path(filepath))
        except ImageReadError as error:
            logger.warning("Image properties left empty: %s", error)
            rows.append({})
            continue
        try:
            properties, descriptors[index] = compute_image_properties(image)
        finally:
            image.close()
        rows.append(properties)
    table = pd.DataFrame(rows, columns=list(PROPERTY_COLUMNS))
    table[IS_COLOUR_FILE] = table[IS_COLOUR_FILE].astype("boolean")
    for column in PROPERTY_COLUMNS[:-1]:
        table[column] = table[column].astype("float64")
    if widths is not None and heights is not None:
        width = np.asarray(widths, dtype=np.float64)
        height = np.asarray(heights, dtype=np.float64)
        table[N_PIXELS] = width * height
        with np.errstate(divide="ignore", invalid="ignore"):
            table[ASPECT_RATIO] = np.where(height > 0, width / height, np.nan)
    return table, descriptors
