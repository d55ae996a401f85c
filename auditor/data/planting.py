"""Planting known problems into a copy of a dataset, to measure an audit against ground truth.

Used by the benchmarks and the real-data tests; never touches the user's original files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def plant_label_noise_in_folder(root: Path, *, rate: float, seed: int, class_depth: int = 1) -> list[dict[str, str]]:
    """Move a seeded `rate` share of images into another class folder (symmetric noise), in place.

    `class_depth` is how many folder levels name the class (1 for `<class>/img`, 2 for Omniglot's
    `<Alphabet>/characterNN/img`). Returns the moves as {relpath (new), true_label, given_label}
    and writes them to `root/planted_label_noise.json`.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and len(p.relative_to(root).parts) == class_depth + 1)
    labels = sorted({"/".join(p.relative_to(root).parts[:class_depth]) for p in files})
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=round(rate * len(files)), replace=False)
    moves = []
    for index in sorted(chosen.tolist()):
        source = files[index]
        true_label = "/".join(source.relative_to(root).parts[:class_depth])
        others = [label for label in labels if label != true_label]
        given = others[int(rng.integers(len(others)))]
        target = root / given / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        moves.append({"relpath": target.relative_to(root).as_posix(), "true_label": true_label, "given_label": given})
    (root / "planted_label_noise.json").write_text(json.dumps(moves, indent=1), encoding="utf-8")
    logger.info("Moved %d of %d images to another class under %s", len(moves), len(files), root)
    return moves
