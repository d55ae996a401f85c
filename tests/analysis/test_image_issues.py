"""Image-property issues on images written in code: blank, dark, odd aspect ratio, grey in colour data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from auditor.analysis.image_issues import ImageIssueDetector
from auditor.analysis.image_properties import load_image_properties


def _colour_texture(rng: np.random.Generator, shape: tuple[int, int] = (48, 48)) -> np.ndarray:
    noise = rng.normal(size=(*shape, 3))
    return np.clip(128 + 600 * ndimage.gaussian_filter(noise, sigma=(2, 2, 0)), 0, 255).astype(np.uint8)


def _properties(tmp_path: Path, images: dict[str, Image.Image]) -> pd.DataFrame:
    paths = []
    for name, image in images.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        paths.append(str(path))
    table, _ = load_image_properties(paths, [i.width for i in images.values()], [i.height for i in images.values()])
    grey = [np.asarray(i.convert("L"), dtype=float).mean() / 255 for i in images.values()]
    return table.assign(brightness=grey, name=list(images))


def test_planted_image_issues_are_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {f"ok{i:02d}": Image.fromarray(_colour_texture(rng)) for i in range(60)}
    images["blank"] = Image.new("RGB", (48, 48), (120, 120, 120))
    images["dark"] = Image.fromarray((_colour_texture(rng) * 0.08).astype(np.uint8))
    images["wide"] = Image.fromarray(_colour_texture(rng, (24, 96)))
    images["grey"] = Image.fromarray(_colour_texture(rng)).convert("L").convert("RGB")  # colour file, grey pixels
    table = _properties(tmp_path, images)
    detector = ImageIssueDetector().fit(table)
    flagged = dict(zip(table["name"], detector.issues_["image_issue_types"], strict=True))
    assert flagged["blank"] == "blank"
    assert flagged["dark"] == "dark"
    assert flagged["wide"] == "odd_aspect_ratio"
    assert flagged["grey"] == "grayscale_in_colour"
    assert not any(flagged[f"ok{i:02d}"] for i in range(60))
    assert detector.summary_["grayscale_in_colour"]["count"] == 1


def test_rules_are_relative_to_the_dataset(tmp_path: Path) -> None:
    """All-grey, all-light data (like Omniglot) is not 'grey in colour' nor 'too light'; common odd sizes switch off."""
    rng = np.random.default_rng(1)
    images = {}
    for i in range(40):
        ink = np.full((40, 40 if i % 3 else 100), 255, dtype=np.uint8)  # a third are wide: not an outlier any more
        ink[rng.integers(0, 40, 30), rng.integers(0, 40, 30)] = 0
        images[f"g{i:02d}"] = Image.fromarray(ink, mode="L")
    table = _properties(tmp_path, images)
    detector = ImageIssueDetector().fit(table)
    assert not detector.issues_["is_image_issue"].any()
    assert detector.summary_["odd_aspect_ratio"]["active"] is False
    assert "off for this dataset" in detector.summary_["odd_aspect_ratio"]["rule"]
