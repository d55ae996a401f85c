"""Report rendering at 10,000 samples: wall seconds and size of index.html, against <= 5 s and <= 15 MB.

Builds (once, outside the timing) a run directory whose tables come from the real analysis code on
synthetic data: 84x84 RGB PNGs with planted label issues (~5%), harmful samples, exact and near
duplicates (some across splits, some with conflicting labels), an underperforming metadata group and
cluster, a label-dependent metadata column, odd images and unreadable files, two extra influence targets
and a rule-gate outcome. Then times `run_reports` (what `auditor report RUN` does after reading its
arguments) with a cold thumbnail cache, median of `--repeats`, and writes benchmarks/results/report_render.json.

    PYTHONPATH=. .venv/bin/python benchmarks/report_render.py [--samples 10000] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import auditor
from auditor.analysis.run import ANALYSIS_FILE, analyse, build_analysis_details, build_findings
from auditor.data.images import probe_images
from auditor.gate import run_gate
from auditor.report.render import INDEX_HTML, run_reports
from auditor.report.thumbnails import _cached_thumbnail
from auditor.schema import ERRORS_TABLE, FINDINGS_FILE, METRICS_FILE, SAMPLES_TABLE
from auditor.store import RunStore

logger = logging.getLogger("benchmarks.report_render")
REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 5.0
TARGET_MEGABYTES = 15.0
IMAGE_SIZE = 84
N_CLASSES = 64
EMBEDDING_DIM = 48
SOURCES = ("studio", "web", "phone", "scanner", "archive")
SOURCE_SHARES = (0.35, 0.2, 0.25, 0.1, 0.1)
BUILDER_VERSION = 4
"""Bump when the synthetic run changes, so a kept --workdir is rebuilt."""


def _class_names() -> list[str]:
    return [f"n{1440764 + 9973 * k:08d}" for k in range(N_CLASSES)]


def _draw_image(rng: np.random.Generator, label: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Class-specific colour and stripes, per-image jitter, two random blobs and noise (RGB uint8).

    The jitter and blobs keep unrelated images of one class apart for the near-duplicate detector, so
    that the duplicate groups it reports are mostly the planted ones.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * (label % 8) / 8 + rng.normal(0, 0.2)
    frequency = (2 + label // 8) * rng.uniform(0.8, 1.25)
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float32)
    gain = rng.uniform(0.6, 1.1)
    image = gain * (0.55 * base + 0.45 * 255 * wave[..., None])
    for _ in range(2):
        cy, cx, ry, rx = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.3)
        blob = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image[blob] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_images(root: Path, n_samples: int, seed: int) -> pd.DataFrame:
    """Write the PNGs; return one row per sample with its planted facts (label, split, metadata, problems)."""
    rng = np.random.default_rng(seed)
    classes = _class_names()
    labels = rng.integers(0, N_CLASSES, n_samples)
    split = rng.choice(["train", "val", "test"], n_samples, p=[0.7, 0.15, 0.15])
    source = rng.choice(SOURCES, n_samples, p=SOURCE_SHARES)
    capture = rng.choice(["day", "night"], n_samples, p=[0.8, 0.2])
    photographer = np.array([f"p{i:02d}" for i in rng.integers(0, 40, n_samples)], dtype=object)
    # label-dependent metadata: photographer p00 shoots the first three classes almost only
    first_classes = labels < 3
    photographer[first_classes & (rng.random(n_samples) < 0.7)] = "p00"
    # a label-dependent metadata column strong enough to be reported: macro lens for the first ten classes
    lens = np.where(labels < 10, "macro", rng.choice(["wide", "standard"], n_samples))
    lens[rng.random(n_samples) < 0.08] = "macro"
    order = rng.permutation(n_samples)
    exact_copies = order[:150]  # each copies the image of the sample listed in `copy_of`
    near_copies = order[150:260]
    blank, dark, light = order[260:275], order[275:295], order[295:305]
    odd_size, grey = order[305:315], order[315:335]
    copy_of = np.full(n_samples, -1)
    sources = order[400:]
    copy_of[exact_copies] = rng.choice(sources, len(exact_copies), replace=False)
    copy_of[near_copies] = rng.choice(sources, len(near_copies), replace=False)
    # a fifth of the exact copies keep the original's label only if not conflicting: plant conflicts
    conflicting = exact_copies[:25]
    for i in np.flatnonzero(copy_of >= 0):
        if i not in conflicting:
            labels[i] = labels[copy_of[i]]
    rows = []
    for i in range(n_samples):
        relpath = f"{classes[labels[i]]}/{classes[labels[i]]}_{i:05d}.png"
        rows.append({"relpath": relpath, "filepath": str(root / relpath)})
    table = pd.DataFrame(rows)
    table["label_index"] = labels
    table["split"] = split
    table["meta_source"] = source
    table["meta_capture"] = capture
    table["meta_photographer"] = photographer
    table["meta_lens"] = lens
    table["copy_of"] = copy_of
    originals = np.flatnonzero(copy_of < 0)
    for i in originals:
        _save(root / table.at[i, "relpath"], _draw_image(rng, int(labels[i])))
    for i in np.flatnonzero(copy_of >= 0):
        source_file = root / table.at[int(copy_of[i]), "relpath"]
        target = root / table.at[i, "relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if i in near_copies:
            pixels = np.asarray(Image.open(source_file), dtype=np.int16) + rng.integers(
                -3, 4, (IMAGE_SIZE, IMAGE_SIZE, 3)
            )
            _save(target, np.clip(pixels, 0, 255).astype(np.uint8))
        else:
            shutil.copyfile(source_file, target)
    for rows_, make in (
        (blank, lambda: np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)),
        (dark, lambda: (_draw_image(rng, 0) * 0.08).astype(np.uint8)),
        (light, lambda: (255 - _draw_image(rng, 1) * 0.05).astype(np.uint8)),
        (odd_size, lambda: np.asarray(Image.fromarray(_draw_image(rng, 2)).resize((400, 90)))),
        (grey, lambda: np.repeat(_draw_image(rng, 3).mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)),
    ):
        for i in rows_:
            _save(root / table.at[int(i), "relpath"], make())
    for k in range(12):  # unreadable files: recorded in errors.parquet, not in the samples table
        broken = root / "broken" / f"truncated_{k:02d}.png"
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 40, dtype=np.uint8)))
    return table


def score_table(table: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Add the scoring-stage columns with planted problems; return (table, embeddings, main-model probs)."""
    rng = np.random.default_rng(seed + 1)
    n = len(table)
    classes = np.array(_class_names(), dtype=object)
    labels = table.pop("label_index").to_numpy()
    table.pop("copy_of")
    night = table["meta_capture"].to_numpy() == "night"
    web = table["meta_source"].to_numpy() == "web"
    # label issues: ~3% base, ~13% among web images (a significant slice), ~5% overall
    is_issue = rng.random(n) < np.where(web, 0.13, 0.03)
    suggested = labels.copy()
    suggested[is_issue] = (labels[is_issue] + rng.integers(1, N_CLASSES, is_issue.sum())) % N_CLASSES
    issue_score = np.where(is_issue, rng.uniform(0.55, 1.0, n), rng.beta(1.2, 8, n))
    # held-out errors: 12% by day, 35% at night (an underperforming group), always on label issues
    wrong = is_issue | (rng.random(n) < np.where(night, 0.35, 0.12))
    oof_predicted = np.where(wrong, (labels + rng.integers(1, N_CLASSES, n)) % N_CLASSES, labels)
    oof_predicted[is_issue] = suggested[is_issue]
    predicted = np.where(rng.random(n) < 0.8, oof_predicted, labels)
    loss = np.where(wrong, rng.gamma(3.0, 0.8, n), rng.gamma(1.2, 0.15, n))
    harm = rng.normal(0, 0.01, n)
    harmful = rng.permutation(n)[:150]
    harm[harmful] = rng.uniform(0.08, 0.3, len(harmful))
    centres = rng.normal(0, 1, (N_CLASSES, EMBEDDING_DIM))
    embedding_class = np.where(is_issue, suggested, labels)
    embeddings = centres[embedding_class] + rng.normal(0, 0.35, (n, EMBEDDING_DIM))
    # night images of the first eight classes share a direction: an underperforming cluster of its own
    odd = night & (labels < 8)
    embeddings[odd] = centres[0] * 0.2 + 1.5 + rng.normal(0, 0.3, (odd.sum(), EMBEDDING_DIM))
    logits = rng.normal(0, 1, (n, N_CLASSES))
    logits[np.arange(n), predicted] += 6
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    table = table.assign(
        label=classes[labels],
        loss=loss,
        # stripe frequency (hence edge density) rises with label // 8: an influence driver that is a class effect
        self_influence=loss * rng.uniform(0.5, 1.5, n) + rng.gamma(1, 0.2, n) + 0.15 * (labels // 8),
        dynamics_loss=loss * rng.uniform(0.8, 1.2, n),
        oof_loss=loss * rng.uniform(0.9, 1.3, n),
        harm_score=harm,
        label_issue_score=issue_score,
        is_label_issue=is_issue,
        suggested_label=classes[suggested],
        given_label_prob=np.where(is_issue, rng.uniform(0.0, 0.2, n), rng.uniform(0.4, 1.0, n)),
        predicted_label=classes[predicted],
        oof_predicted_label=classes[oof_predicted],
        is_harmful=np.isin(np.arange(n), harmful),
        harm_test=harm * 0.7 + rng.normal(0, 0.01, n),
        harm_night=np.where(night, harm + rng.normal(0, 0.02, n), rng.normal(0, 0.01, n)),
    )
    return table, embeddings.astype(np.float32), probs.astype(np.float32)


def build_run(workdir: Path, n_samples: int, seed: int) -> RunStore:
    """Write (or reuse) the synthetic run under `workdir`; tables come from the real analysis code."""
    stamp = {"builder": BUILDER_VERSION, "samples": n_samples, "seed": seed, "tool": auditor.__version__}
    marker = workdir / "built.json"
    store = RunStore(workdir / "run")
    if marker.is_file() and json.loads(marker.read_text()) == stamp and store.has("gate.json"):
        logger.info("Reusing %s", store.root)
        return store
    shutil.rmtree(workdir, ignore_errors=True)
    images = workdir / "images"
    started = time.perf_counter()
    planted = write_images(images, n_samples, seed)
    logger.info("Wrote %d images in %.0f s", n_samples, time.perf_counter() - started)
    probed, failures = probe_images(
        planted["filepath"].tolist() + [str(p) for p in sorted((images / "broken").iterdir())]
    )
    table = planted.merge(probed, on="filepath", how="inner", validate="one_to_one")
    table.insert(0, "sample_id", [hashlib.sha1(r.encode()).hexdigest()[:16] for r in table["relpath"]])
    table, embeddings, probs = score_table(table, seed)
    errors = pd.DataFrame(
        {
            "sample_id": [hashlib.sha1(p.encode()).hexdigest()[:16] for p in failures],
            "filepath": list(failures),
            "stage": "ingest",
            "error": list(failures.values()),
        }
    )
    store.prepare(
        {"data": str(images), "seed": seed, "epochs": 20, "folds": 2, "checkpoints": 5, "model": "auto"},
        overwrite=True,
        tool_version=auditor.__version__,
    )
    store.write_array("embeddings", embeddings)
    store.write_array("probs_main", probs)
    started = time.perf_counter()
    table, results = analyse(table, store, _class_names())
    findings, metrics = build_findings(table, errors, results)
    logger.info("Analysis: %d findings in %.0f s", len(findings), time.perf_counter() - started)
    store.write_table(SAMPLES_TABLE, table)
    store.write_table(ERRORS_TABLE, errors)
    store.write_json(FINDINGS_FILE, findings)
    store.write_json(METRICS_FILE, metrics)
    store.write_json(ANALYSIS_FILE, build_analysis_details(table, results))
    store.update_manifest(
        data_fingerprint=hashlib.sha256("".join(table["content_hash"]).encode()).hexdigest(),
        versions={"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__},
        stages_done=["ingest", "train", "score", "analyze"],
    )
    run_gate(store, REPO / "rules" / "release.yaml")
    marker.write_text(json.dumps(stamp))
    return store


def time_render(store: RunStore, repeats: int) -> list[float]:
    """Wall seconds of `run_reports` per repeat, each with a cold thumbnail cache."""
    seconds = []
    for _ in range(repeats):
        _cached_thumbnail.cache_clear()
        started = time.perf_counter()
        run_reports(store)
        seconds.append(time.perf_counter() - started)
        logger.info("Rendered in %.2f s", seconds[-1])
    return seconds


def time_cli(store: RunStore) -> float:
    """Wall seconds of `python -m auditor report RUN` in a fresh interpreter (imports included)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "auditor", "report", str(store.root)], check=True, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/auditor-report-render-bench", help="kept between runs")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "report_render.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = build_run(Path(args.workdir), args.samples, args.seed)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    seconds = time_render(store, args.repeats)
    cli_seconds = time_cli(store)
    html = store.path(INDEX_HTML)
    findings = store.read_json(FINDINGS_FILE)
    kinds = pd.Series([f["kind"] for f in findings]).value_counts().sort_index()
    n_bytes = html.stat().st_size
    summary: dict[str, Any] = {
        "command": " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/report_render.py", *sys.argv[1:]]),
        "what": "run_reports(store) (index.html, summary.md, audit.json, audit.junit.xml) from the run's tables, "
        "cold thumbnail cache; cli_wall_s adds interpreter start and imports (`python -m auditor report RUN`)",
        "n_samples": len(store.read_table(SAMPLES_TABLE)),
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB PNG",
        "n_findings": len(findings),
        "findings_by_kind": {str(k): int(v) for k, v in kinds.items()},
        "render_wall_s": {"median": statistics.median(seconds), "runs": seconds},
        "cli_wall_s": cli_seconds,
        "html_bytes": n_bytes,
        "html_megabytes": n_bytes / 1e6,
        "targets": {"render_wall_s_max": TARGET_SECONDS, "html_megabytes_max": TARGET_MEGABYTES},
        "met": {
            "render_wall_s": statistics.median(seconds) <= TARGET_SECONDS,
            "html_megabytes": n_bytes / 1e6 <= TARGET_MEGABYTES,
        },
        "meta": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1m_before": round(load_before, 2),
            "python": platform.python_version(),
        },
    }
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("median %.2f s, %.2f MB -> %s", summary["render_wall_s"]["median"], n_bytes / 1e6, args.out)


if __name__ == "__main__":
    main()
