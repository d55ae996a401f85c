"""A small fake run directory written through RunStore, with planted answers, for the report tests.

The run holds 40 samples with tiny PNGs, hostile strings in a label, a metadata value, a relpath and a
finding title, one missing image, findings of every kind, metrics, errors and a demo self-check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from auditor.store import RunStore

HOSTILE = "<script>alert(1)</script>"
HOSTILE_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
QUOTED = "\"quoted\" & 'single' <b>bold</b> — ünïcødé 漢字"
LONG_NAME = "very_long_directory_name_" * 20 + "image.png"
ODD_FILENAME = "ünïcødé \"q\" 'x' <b>.png"
CLASSES = ("cat", "dog", "bird")
N_SAMPLES = 40


@dataclass(frozen=True)
class FakeRun:
    """A written run directory and the answers planted in it."""

    store: RunStore
    label_issue_order: list[str]
    harmful_order: list[str]
    missing_image_id: str
    hostile_label_id: str


def _write_image(path: Path, rng: np.random.Generator, size: int, mode: str) -> None:
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    image.save(path)


def write_fake_run(root: Path, *, with_scores: bool = True) -> FakeRun:
    """Write a complete (or, without scores, a just-ingested) run directory under `root`."""
    rng = np.random.default_rng(7)
    images = root / "images"
    images.mkdir(parents=True)
    store = RunStore(root / "run")
    store.prepare(
        {"data": str(images), "seed": 3, "folds": 2, "epochs": 4, "model": "auto", "checkpoints": 3},
        overwrite=False,
        tool_version="0.1.0",
    )
    store.update_manifest(
        data_fingerprint="sha256:0123456789abcdef0123456789abcdef",
        versions={"torch": "2.14.1", "numpy": "2.0.0", "pandas": "3.0.0"},
        stages_done=["ingest", "train", "score", "analyse"],
    )

    rows = []
    for i in range(N_SAMPLES):
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        name = ODD_FILENAME if i == 5 else f"img_{i:03d}.png"
        path = images / name
        mode = "L" if i % 2 else "RGB"
        if i != 9:  # sample 9's file is missing on disk: the report must show a placeholder
            _write_image(path, rng, size=8 if i % 3 else 28, mode=mode)
        rows.append(
            {
                "sample_id": f"s{i:03d}",
                "filepath": str(path),
                "relpath": LONG_NAME if i == 2 else (f"{HOSTILE}/{name}" if i == 4 else name),
                "split": split,
                "label": HOSTILE if i == 4 else CLASSES[i % 3],
                "meta_scanner": QUOTED if i % 4 == 0 else f"scanner-{i % 2}",
                "meta_site": None if i % 5 == 0 else "north",
                "width": 8 if i % 3 else 28,
                "height": 8 if i % 3 else 28,
                "mode": mode,
                "file_bytes": 100 + i,
                "content_hash": f"h{i:03d}",
                "brightness": float(i) / N_SAMPLES,
            }
        )
    samples = pd.DataFrame(rows)
    flagged = [2, 4, 5, 9, 11, 17, 30, 38]
    harmful = [1, 3, 4, 6, 13]
    if with_scores:
        label_scores = np.round(rng.uniform(0.0, 0.4, N_SAMPLES), 4)
        for rank, i in enumerate(flagged):
            label_scores[i] = 0.95 - 0.05 * ((rank * 3) % len(flagged))  # distinct, not in id order
        harm = np.round(rng.normal(-0.1, 0.05, N_SAMPLES), 4)
        for rank, i in enumerate(harmful):
            harm[i] = 0.5 + 0.1 * ((rank * 2) % len(harmful))
        samples = samples.assign(
            loss=np.round(rng.uniform(0, 3, N_SAMPLES), 4),
            self_influence=np.round(rng.uniform(0, 10, N_SAMPLES), 4),
            label_issue_score=label_scores,
            is_label_issue=[i in flagged for i in range(N_SAMPLES)],
            suggested_label=[CLASSES[(i + 1) % 3] for i in range(N_SAMPLES)],
            predicted_label=[CLASSES[(i + 1) % 3] for i in range(N_SAMPLES)],
            given_label_prob=np.round(1 - label_scores, 4),
            harm_score=harm,
            is_harmful=[i in harmful for i in range(N_SAMPLES)],
            is_duplicate=[i in (0, 1, 25, 7, 33) for i in range(N_SAMPLES)],
            duplicate_group=["g1" if i in (0, 1, 25) else ("g2" if i in (7, 33) else None) for i in range(N_SAMPLES)],
        )
    store.write_table("samples", samples)
    store.write_table(
        "errors",
        pd.DataFrame(
            {
                "sample_id": ["e000", "e001"],
                "filepath": [str(images / "broken.png"), str(images / f"{HOSTILE}.jpg")],
                "stage": ["ingest", "ingest"],
                "error": ["cannot identify image file", f"truncated {HOSTILE}"],
            }
        ),
    )
    if with_scores:
        store.write_json("findings.json", _findings(flagged))
        store.write_json(
            "metrics.json",
            {
                "dataset": {"n_samples": N_SAMPLES, "n_classes": 4, "n_errors": 2},
                "model": {"accuracy": {"train": 0.91, "val": 0.82, "test": 0.8}},
                "issues": {
                    "label_issue": {"count": len(flagged), "rate": len(flagged) / N_SAMPLES},
                    "harmful": {"count": len(harmful)},
                    "duplicate": {"count": 5},
                },
                "leakage": {"cross_split_pairs": 3},
                "slices": {"significant": {"count": 1}, "worst": {"accuracy_gap": 0.21}},
                "influence_check": {
                    "method": "tracin",
                    "n_removed": 3,
                    "full_loss": 0.62,
                    "random_loss_drop": -0.01,
                    "loss_drop": {"harm_score": 0.05, "knn_harm": -0.02},
                    "harm_beats_random": True,
                    "lds": {"harm_score": 0.31, "knn_harm": 0.12},
                    "seconds": 42.0,
                },
            },
        )
        store.write_json(
            "demo_check.json",
            {
                "problems": [
                    {
                        "name": "label_flips",
                        "planted": 8,
                        "found": 7,
                        "recall": 0.875,
                        "precision": 0.7,
                        "how": "confident learning on cross-fitted probabilities",
                    },
                    {
                        "name": "duplicates",
                        "planted": 2,
                        "found": 2,
                        "recall": 1.0,
                        "precision": 1.0,
                        "how": "content hash",
                    },
                ]
            },
        )
    label_order = (
        sorted(
            (f"s{i:03d}" for i in flagged),
            key=lambda s: -float(samples.set_index("sample_id").at[s, "label_issue_score"]),
        )
        if with_scores
        else []
    )
    harm_order = (
        sorted((f"s{i:03d}" for i in harmful), key=lambda s: -float(samples.set_index("sample_id").at[s, "harm_score"]))
        if with_scores
        else []
    )
    return FakeRun(
        store=store,
        label_issue_order=label_order,
        harmful_order=harm_order,
        missing_image_id="s009",
        hostile_label_id="s004",
    )


def _findings(flagged: list[int]) -> list[dict[str, object]]:
    return [
        {
            "finding_id": "info-1",
            "kind": "image_issue",
            "severity": "info",
            "title": "3 images are much darker than the rest",
            "sample_ids": ["s001", "s002", "s003"],
            "evidence": {"threshold": 0.1, "column": "brightness"},
            "fiftyone_view": None,
        },
        {
            "finding_id": "label-1",
            "kind": "label_issue",
            "severity": "critical",
            "title": f"{len(flagged)} samples look mislabeled",
            "sample_ids": [f"s{i:03d}" for i in flagged],
            "evidence": {"rate": len(flagged) / N_SAMPLES, "n": len(flagged)},
            "fiftyone_view": "audit-label-issues",
        },
        {
            "finding_id": "dup-1",
            "kind": "duplicate",
            "severity": "warning",
            "title": "3 exact duplicates",
            "sample_ids": ["s000", "s001", "s025"],
            "evidence": {"match": "exact", "cross_split": True, "conflicting_labels": True},
            "fiftyone_view": None,
        },
        {
            "finding_id": "leak-1",
            "kind": "leakage",
            "severity": "critical",
            "title": "Near duplicates across train and test",
            "sample_ids": ["s007", "s033"],
            "evidence": {"match": "near", "cross_split": True, "conflicting_labels": False, "distance": 0.01},
            "fiftyone_view": None,
        },
        {
            "finding_id": "slice-1",
            "kind": "slice",
            "severity": "warning",
            "title": f"Label issues concentrate in meta_scanner = {QUOTED}",
            "sample_ids": ["s000", "s004", "s008"],
            "evidence": {
                "column": "meta_scanner",
                "value": QUOTED,
                "n": 10,
                "n_flagged": 4,
                "lift": 2.5,
                "p_value": 0.003,
                "q_value": 0.01,
                "members": list(range(30)),
            },
            "fiftyone_view": None,
        },
        {
            "finding_id": "hostile-1",
            "kind": "spurious_correlation",
            "severity": "warning",
            "title": f"Class {HOSTILE} is predictable from meta_site",
            "sample_ids": ["s004"],
            "evidence": {"column": "meta_site", "value": HOSTILE, "auc": 0.93},
            "fiftyone_view": None,
        },
    ]
