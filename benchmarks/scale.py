"""How `auditor audit` scales with dataset size: wall seconds per stage and peak RSS at 1k / 10k (/ 100k) images.

Synthetic data: 16x16 greyscale PNGs, 10 classes, each a class-specific bright bar plus per-image noise, in
an image folder (no splits: the audit draws its validation split). Each size is audited from scratch by
`python -m auditor audit DATA --out RUN --no-fiftyone` in a subprocess with the default audit settings
(or --epochs etc. if given); stage times come from the timestamps of its "Stage <name>" log lines, peak
memory from `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` (sizes run in ascending order, and that
figure is the largest child so far, so each is that size's peak). A size whose estimate, extrapolated
linearly from the largest finished size, exceeds --budget-s is recorded as not run.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--budget-s 600]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger("benchmarks.scale")
REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "scale.json"
IMAGE_SIZE = 16
N_CLASSES = 10
_STAGE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO auditor\.pipeline: Stage (\w+)")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    """`n` images over N_CLASSES class folders; class k has a bright horizontal bar at row k."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % N_CLASSES
        image = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE))
        image[label + 3, :] += 180
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(folder / f"{i:06d}.png")


def stage_seconds(stderr: str, end: float) -> dict[str, float]:
    """Seconds from each "Stage X" log line to the next (the last one to the process's end, `end` epoch s)."""
    marks = [
        (name, datetime.strptime(stamp, _TIME_FORMAT).timestamp())
        for stamp, name in (m.groups() for m in map(_STAGE_LINE.match, stderr.splitlines()) if m)
    ]
    ends = [t for _, t in marks[1:]] + [end]
    return {name: round(stop - start, 2) for (name, start), stop in zip(marks, ends, strict=True)}


def audit_once(data: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """Audit `data` into `out` in a subprocess; wall time, stage times, peak RSS of the largest child so far."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "auditor", "audit", str(data), "--out", str(out), "--no-fiftyone", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"audit failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {
        "wall_s": round(wall, 2),
        "stages_s": stage_seconds(done.stderr, time.time()),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "n_findings": len(json.loads((out / "findings.json").read_text())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--budget-s", type=float, default=600.0, help="skip a size estimated to take longer")
    parser.add_argument("--workdir", default=None, help="where to write images and runs (default: a temp dir)")
    parser.add_argument("--audit-args", nargs=argparse.REMAINDER, default=[], help="extra `auditor audit` options")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="auditor-scale-"))
    results: dict[str, Any] = {}
    last: tuple[int, float] | None = None
    for n in sorted(args.sizes):
        if last is not None:
            estimate = last[1] * n / last[0]
            if estimate > args.budget_s:
                logger.info(
                    "Skipping %d images: about %.0f s estimated, over the %.0f s budget", n, estimate, args.budget_s
                )
                results[str(n)] = {"run": False, "reason": f"estimated {estimate:.0f} s > budget {args.budget_s:.0f} s"}
                continue
        data, out = workdir / f"data{n}", workdir / f"run{n}"
        shutil.rmtree(out, ignore_errors=True)
        if not data.is_dir():
            start = time.perf_counter()
            make_folder(data, n)
            logger.info("Wrote %d images in %.1f s", n, time.perf_counter() - start)
        logger.info("Auditing %d images", n)
        results[str(n)] = {"run": True, **audit_once(data, out, args.audit_args)}
        logger.info("%d images: %s", n, results[str(n)])
        last = (n, results[str(n)]["wall_s"])
    report = {
        "benchmark": "auditor audit wall time and peak RSS by dataset size",
        "data": f"{IMAGE_SIZE}x{IMAGE_SIZE} greyscale PNG, {N_CLASSES} classes, image folder without splits",
        "audit_args": args.audit_args or "defaults (20 epochs, 5 checkpoints, 2 folds, batch 64)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sizes": results,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Wrote %s", RESULT)


if __name__ == "__main__":
    main()
