"""Image-property issues: blank or low-information images, very dark or light ones, odd sizes and aspect ratios,
grey images mixed into colour data.

Each rule compares an image with the typical image of its own dataset (the median), so a white-background
dataset is not "too light" and a dataset of thumbnails is not "too small". A rule that would flag more
than `max_fraction` of the images describes the dataset, not outliers, and is switched off for it (its
summary says so). Blank images are always flagged, and only as blank (not also dark, light or grey).
Pure compute on the property table; no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.image_properties import (
    ASPECT_RATIO,
    COLOURFULNESS,
    CONTRAST,
    IS_COLOUR_FILE,
    N_PIXELS,
    PNG_BITS_PER_PIXEL,
)
from auditor.schema import BRIGHTNESS

ISSUE_TYPES = ("blank", "low_information", "dark", "light", "odd_size", "odd_aspect_ratio", "grayscale_in_colour")
ISSUE_DESCRIPTIONS = {
    "blank": "blank (a single flat grey level)",
    "low_information": "low-information (compresses to a quarter of the typical image or less)",
    "dark": "very dark for this dataset",
    "light": "very light for this dataset",
    "odd_size": "an unusual size (4x more or fewer pixels than the typical image)",
    "odd_aspect_ratio": "an unusual aspect ratio (2x wider or taller than the typical image)",
    "grayscale_in_colour": "grey-scale in a colour dataset",
}


class ImageIssueDetector:
    """Flags images whose properties make them unusable or out of place in their dataset.

    Rules (`median` = the dataset's median of the property):
      blank:               contrast (grey std) < `blank_contrast`
      low_information:     png_bits_per_pixel < `low_information_ratio` x median (and not blank)
      dark / light:        brightness < `dark_level` and < median - `brightness_margin` (light: the mirror)
      odd_size:            n_pixels differs from the median by a factor > `size_ratio`
      odd_aspect_ratio:    aspect ratio differs from the median by a factor > `aspect_ratio`
      grayscale_in_colour: colourfulness < `grey_colourfulness` while the median image is colourful
    Learned: `issues_` (one bool column per issue type, `is_image_issue`, `image_issue_types` text, in
    row order) and `summary_` ({type: {count, active, rule}}).
    """

    def __init__(
        self,
        blank_contrast: float = 0.01,
        low_information_ratio: float = 0.25,
        dark_level: float = 0.08,
        light_level: float = 0.92,
        brightness_margin: float = 0.25,
        size_ratio: float = 4.0,
        aspect_ratio: float = 2.0,
        grey_colourfulness: float = 0.005,
        colour_dataset_colourfulness: float = 0.02,
        max_fraction: float = 0.05,
    ) -> None:
        self.blank_contrast = blank_contrast
        self.low_information_ratio = low_information_ratio
        self.dark_level = dark_level
        self.light_level = light_level
        self.brightness_margin = brightness_margin
        self.size_ratio = size_ratio
        self.aspect_ratio = aspect_ratio
        self.grey_colourfulness = grey_colourfulness
        self.colour_dataset_colourfulness = colour_dataset_colourfulness
        self.max_fraction = max_fraction

    def fit(self, properties: pd.DataFrame) -> ImageIssueDetector:
        """`properties`: the columns of `load_image_properties` plus `brightness` (missing ones skip their rules)."""
        n = len(properties)

        def column(name: str) -> np.ndarray:
            if name not in properties:
                return np.full(n, np.nan)
            return pd.to_numeric(properties[name], errors="coerce").to_numpy(dtype=np.float64)

        def median(values: np.ndarray) -> float:
            finite = values[np.isfinite(values)]
            return float(np.median(finite)) if len(finite) else np.nan

        contrast, bits, brightness = column(CONTRAST), column(PNG_BITS_PER_PIXEL), column(BRIGHTNESS)
        pixels, aspect, colour = column(N_PIXELS), column(ASPECT_RATIO), column(COLOURFULNESS)
        blank = contrast < self.blank_contrast
        with np.errstate(invalid="ignore", divide="ignore"):
            size_factor = np.exp(np.abs(np.log(pixels / median(pixels))))
            aspect_factor = np.exp(np.abs(np.log(aspect / median(aspect))))
        colour_dataset = median(colour) >= self.colour_dataset_colourfulness
        rules: dict[str, tuple[np.ndarray, str]] = {
            "blank": (blank, f"contrast < {self.blank_contrast}"),
            "low_information": (
                ~blank & (bits < self.low_information_ratio * median(bits)),
                f"png_bits_per_pixel < {self.low_information_ratio} x median ({median(bits):.3g})",
            ),
            "dark": (
                ~blank & (brightness < self.dark_level) & (brightness < median(brightness) - self.brightness_margin),
                f"brightness < {self.dark_level} and < median ({median(brightness):.3g}) - {self.brightness_margin}",
            ),
            "light": (
                ~blank & (brightness > self.light_level) & (brightness > median(brightness) + self.brightness_margin),
                f"brightness > {self.light_level} and > median ({median(brightness):.3g}) + {self.brightness_margin}",
            ),
            "odd_size": (size_factor > self.size_ratio, f"pixel count differs from the median by > {self.size_ratio}x"),
            "odd_aspect_ratio": (
                aspect_factor > self.aspect_ratio,
                f"aspect ratio differs from the median ({median(aspect):.3g}) by > {self.aspect_ratio}x",
            ),
            "grayscale_in_colour": (
                ~blank & (colour < self.grey_colourfulness) & colour_dataset,
                f"colourfulness < {self.grey_colourfulness} in a colour dataset (median {median(colour):.3g})",
            ),
        }
        issues = pd.DataFrame(index=properties.index)
        summary: dict[str, dict[str, Any]] = {}
        for name in ISSUE_TYPES:
            flagged, rule = rules[name]
            flagged = np.asarray(flagged, dtype=bool)
            active = name == "blank" or flagged.sum() <= self.max_fraction * max(n, 1)
            if not active:
                rule += f"; off for this dataset: it would flag {flagged.mean():.0%} of the images"
                flagged = np.zeros(n, dtype=bool)
            issues[name] = flagged
            summary[name] = {"count": int(flagged.sum()), "active": bool(active), "rule": rule}
        if IS_COLOUR_FILE in properties:
            summary["grayscale_in_colour"]["grey_files"] = int(
                (~properties[IS_COLOUR_FILE].fillna(True).astype(bool)).sum()
            )
        issues["is_image_issue"] = issues[list(ISSUE_TYPES)].any(axis=1)
        issues["image_issue_types"] = [
            ",".join(t for t in ISSUE_TYPES if row[t]) for row in issues[list(ISSUE_TYPES)].to_dict(orient="records")
        ]
        self.issues_ = issues
        self.summary_ = summary
        return self
