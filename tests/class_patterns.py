"""The tiny grey images several test suites plant: one class-specific bar per class plus per-image noise."""

from __future__ import annotations

import numpy as np


def class_pattern(label: int, index: int) -> np.ndarray:
    """12x12 uint8 image of class `label` (0: a row bar, 1: a column bar, else a square); `index` seeds the noise."""
    rng = np.random.default_rng(1000 * label + index)
    image = rng.integers(0, 50, (12, 12))
    if label == 0:
        image[2:5, :] += 200
    elif label == 1:
        image[:, 2:5] += 200
    else:
        image[7:10, 7:10] += 200
    return np.clip(image, 0, 255).astype(np.uint8)
