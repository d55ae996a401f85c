"""The built-in demo: scikit-learn's bundled digits written as an image folder with planted, documented problems.

Owns only the files it writes under the demo root (train/, val/, metadata.csv, planted.json). No downloads.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
VAL_FRACTION = 0.2
FLIP_FRACTION = 0.05
ARTIFACT_CLASSES = ("0", "1", "7")
ARTIFACT_RATE_IN_CLASSES = 0.7
ARTIFACT_RATE_ELSEWHERE = 0.05
ARTIFACT_SIZE = 3
N_DUPLICATES = 6
SCANNER_A = "scanner_a"
SCANNER_B = "scanner_b"
PLANTED_FILE = "planted.json"
METADATA_FILE = "metadata.csv"
_OWNED = ("train", "val", METADATA_FILE, PLANTED_FILE)


def render_digit(image: np.ndarray, *, artifact: bool) -> bytes:
    """PNG bytes of an 8x8 digit (values 0..16) as 16x16 8-bit grayscale, nearest-neighbour upscaled x2.

    `artifact` paints the scanner_b mark: a white 3x3 block in the top-left corner.
    """
    pixels = np.rint(np.asarray(image, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((2, 2), dtype=np.uint8))
    if artifact:
        pixels[:ARTIFACT_SIZE, :ARTIFACT_SIZE] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def is_complete_demo(root: Path, seed: int) -> bool:
    """True if `root` holds a finished demo of this version and seed (planted.json is written last)."""
    try:
        planted = json.loads((root / PLANTED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if planted.get("seed") != seed or planted.get("version") != DEMO_VERSION:
        return False
    written = sum(1 for split in ("train", "val") for _ in (root / split).rglob("*.png"))
    return written == planted.get("n_images") and (root / METADATA_FILE).is_file()


def _plan_demo(seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every file to write (relpath, bytes, scanner) and the planted.json document, from the seed alone."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target.astype(int)
    n = len(targets)
    rng = np.random.default_rng(seed)

    is_val = np.zeros(n, dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(targets == digit)
        n_val = max(1, round(len(members) * VAL_FRACTION))
        is_val[rng.permutation(members)[:n_val]] = True

    rates = np.where(np.isin(targets.astype(str), ARTIFACT_CLASSES), ARTIFACT_RATE_IN_CLASSES, ARTIFACT_RATE_ELSEWHERE)
    scanner_b = rng.random(n) < rates

    train_index = np.flatnonzero(~is_val)
    n_flips = round(len(train_index) * FLIP_FRACTION)
    flipped = np.sort(rng.choice(train_index, size=n_flips, replace=False))
    given = targets.copy()
    given[flipped] = (targets[flipped] + rng.integers(1, 10, size=n_flips)) % 10

    clean_train = np.setdiff1d(train_index, flipped)
    originals = np.sort(rng.choice(clean_train, size=N_DUPLICATES, replace=False))

    files: list[dict[str, Any]] = []
    relpath_of: dict[int, str] = {}
    for i in range(n):
        split = "val" if is_val[i] else "train"
        relpath = f"{split}/{given[i]}/digit_{i:04d}.png"
        relpath_of[i] = relpath
        data = render_digit(images[i], artifact=bool(scanner_b[i]))
        files.append({"relpath": relpath, "data": data, "scanner": SCANNER_B if scanner_b[i] else SCANNER_A})
    duplicates = []
    for k, i in enumerate(originals):
        copy = f"val/{given[i]}/dup_{k:02d}_digit_{i:04d}.png"
        files.append({"relpath": copy, "data": files[i]["data"], "scanner": files[i]["scanner"]})
        duplicates.append({"original": relpath_of[int(i)], "copy": copy, "cross_split": True})

    planted = {
        "version": DEMO_VERSION,
        "seed": seed,
        "n_images": len(files),
        "source": "sklearn.datasets.load_digits (8x8, 0..16) as 16x16 8-bit PNG, nearest-neighbour x2",
        "label_flips": [
            {"relpath": relpath_of[int(i)], "true_label": str(targets[i]), "given_label": str(given[i])}
            for i in flipped
        ],
        "artifact_group": {
            "column": "meta_scanner",
            "value": SCANNER_B,
            "artifact": f"white {ARTIFACT_SIZE}x{ARTIFACT_SIZE} block in the top-left corner",
            "classes": list(ARTIFACT_CLASSES),
            "rate_in_classes": ARTIFACT_RATE_IN_CLASSES,
            "rate_elsewhere": ARTIFACT_RATE_ELSEWHERE,
            "relpaths": sorted(f["relpath"] for f in files if f["scanner"] == SCANNER_B),
        },
        "duplicates": duplicates,
    }
    return files, planted


def build_demo_dataset(root: Path, *, seed: int = 0) -> Path:
    """Write the digits demo under `root` and return `root` (resolved); do nothing if it is already complete.

    Layout `root/{train,val}/<digit>/<name>.png` (1,797 digits + 6 duplicate copies), `root/metadata.csv`
    (filepath, scanner) and `root/planted.json` listing the planted label flips (~5% of train), the scanner_b
    artifact group (correlated with classes 0, 1, 7) and the cross-split exact duplicates. Same seed, same bytes.
    An incomplete or other-seed demo under `root` is replaced (only the paths this function owns).
    """
    root = Path(root).expanduser().resolve()
    if is_complete_demo(root, seed):
        logger.info("Demo dataset for seed %d already complete in %s", seed, root)
        return root
    files, planted = _plan_demo(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for entry in files:
        path = root / entry["relpath"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry["data"])
    rows = sorted((entry["relpath"], entry["scanner"]) for entry in files)
    (root / METADATA_FILE).write_text(
        "filepath,scanner\n" + "".join(f"{relpath},{scanner}\n" for relpath, scanner in rows), encoding="utf-8"
    )
    partial = root / f".{PLANTED_FILE}.tmp"
    partial.write_text(json.dumps(planted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, root / PLANTED_FILE)
    logger.info(
        "Wrote demo dataset (%d images, %d label flips, %d scanner_b, %d duplicates) to %s",
        len(files),
        len(planted["label_flips"]),
        len(planted["artifact_group"]["relpaths"]),
        len(planted["duplicates"]),
        root,
    )
    return root
