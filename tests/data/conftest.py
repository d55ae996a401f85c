"""Builders for tiny on-disk image datasets (written with PIL in tmp_path) and an ingest shortcut."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.config import AuditConfig
from auditor.data.sources import load_samples
from auditor.store import RunStore

WriteImage = Callable[..., Path]
Ingest = Callable[..., tuple[pd.DataFrame, pd.DataFrame]]


def write_image(path: Path, *, value: int = 128, size: tuple[int, int] = (12, 10), mode: str = "L") -> Path:
    """Write a small image whose pixels vary with `value` (so different values give different bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = (np.arange(width * height, dtype=np.int64).reshape(height, width) + value) % 256
    gray = Image.fromarray(ramp.astype(np.uint8), mode="L")
    gray.convert(mode).save(path)
    return path


@pytest.fixture
def make_image() -> WriteImage:
    """The `write_image` helper as a fixture."""
    return write_image


def build_imagefolder(root: Path, classes: dict[str, int], *, split: str | None = None, ext: str = ".png") -> Path:
    """Write `n` images per class under root[/split]/<class>/; pixel values differ for every file."""
    base = root / split if split else root
    offset = {"train": 0, "val": 3, "test": 5}.get(split or "", 1)
    for ci, (label, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            write_image(base / label / f"img_{i:02d}{ext}", value=ci * 37 + i * 11 + offset)
    return root


@pytest.fixture
def make_imagefolder() -> Callable[..., Path]:
    """The `build_imagefolder` helper as a fixture."""
    return build_imagefolder


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    """Run `load_samples` on DATA with a fresh run store below tmp_path; keyword args go to AuditConfig."""
    counter = iter(range(1_000_000))

    def run(data: Path | str, **options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        store = RunStore(tmp_path / f"run{next(counter)}")
        return load_samples(AuditConfig(data=str(data), **options), store)

    return run
