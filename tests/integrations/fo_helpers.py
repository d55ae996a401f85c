"""Helpers of the FiftyOne tests: a planted image set, and FiftyOne / the CLI run in child processes.

Every FiftyOne call happens in a child process whose FIFTYONE_DATABASE_DIR lies in the test's tmp dir, so the tests
use a real MongoDB that no other process shares, and each check reads the database from a NEW process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tests.class_patterns import class_pattern

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("a", "b", "c")
PER_CLASS = 8
FLIPPED = {("a", 3): "b", ("a", 6): "c"}  # (true class, index) -> the label it is given
DUPLICATE = (("b", 1), ("b", 2))  # the second is a byte copy of the first
AUDIT_ARGS = ("--epochs", "6", "--folds", "2", "--checkpoints", "2", "--batch-size", "8")


@dataclass(frozen=True)
class PlantedImages:
    """The image files and their given labels, splits and metadata; `flipped` holds the mislabeled files."""

    root: Path
    rows: list[dict[str, Any]]
    flipped: set[str]
    duplicates: tuple[str, str]


@dataclass(frozen=True)
class AuditedDataset:
    """A FiftyOne dataset after `auditor audit --fiftyone`, with its run directory and a snapshot of the database."""

    name: str
    images: PlantedImages
    env: dict[str, str]
    run_dir: Path
    ids: dict[str, str]  # filepath -> FiftyOne id
    audit_argv: list[str]
    snapshot: dict[str, Any]

    def findings(self) -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = json.loads((self.run_dir / "findings.json").read_text(encoding="utf-8"))
        return loaded


def build_planted_images(root: Path) -> PlantedImages:
    """3 classes x 8 PNGs under `root/<given label>/`: 2 flipped labels and one exact duplicate pair."""
    rows: list[dict[str, Any]] = []
    flipped: set[str] = set()
    paths: dict[tuple[str, int], Path] = {}
    for label_index, true_label in enumerate(CLASSES):
        for index in range(PER_CLASS):
            given = FLIPPED.get((true_label, index), true_label)
            path = root / given / f"{true_label}{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if (true_label, index) == DUPLICATE[1]:
                path.write_bytes(paths[DUPLICATE[0]].read_bytes())
            else:
                Image.fromarray(class_pattern(label_index, index), mode="L").save(path)
            paths[(true_label, index)] = path
            if given != true_label:
                flipped.add(str(path))
            rows.append(
                {
                    "filepath": str(path),
                    "label": given,
                    "split": "val" if index in (4, 7) else "train",
                    "scanner": "s1" if index % 2 else "s2",
                }
            )
    duplicates = (str(paths[DUPLICATE[0]]), str(paths[DUPLICATE[1]]))
    return PlantedImages(root=root, rows=rows, flipped=flipped, duplicates=duplicates)


def fiftyone_env(db_dir: Path) -> dict[str, str]:
    """The environment of a child process that uses the FiftyOne database in `db_dir`."""
    env = dict(os.environ)
    env.update(
        FIFTYONE_DATABASE_DIR=str(db_dir),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        PYTHONPATH=str(REPO_ROOT),
    )
    env.pop("FIFTYONE_DATABASE_URI", None)
    # FiftyOne exports the port of the mongod a process started; inherited, it would point this child at another
    # database (or, once that mongod has exited, at whatever reuses the port: "Got response id ... but expected").
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    return env


def run_python(code: str, env: dict[str, str], *, timeout: float = 300) -> Any:
    """Run `code` in a new interpreter; it must print one JSON document as its last stdout line, returned here."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`auditor ARGS` in a new interpreter (quiet logging); the completed process, never raising on failure."""
    return subprocess.run(
        [sys.executable, "-m", "auditor", "-q", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )


def create_fiftyone_dataset(name: str, images: PlantedImages, env: dict[str, str]) -> dict[str, str]:
    """Create the persistent dataset `name` (ground_truth, split, scanner, an `emb` vector, a saved view `my-view`,
    one sample tagged `reviewed`); return {filepath: id}."""
    rows = json.dumps(images.rows)
    code = f"""
        import json
        import numpy as np
        import fiftyone as fo

        rows = json.loads({rows!r})
        dataset = fo.Dataset({name!r}, persistent=True)
        samples = []
        for row in rows:
            pixels = np.asarray(__import__("PIL.Image").Image.open(row["filepath"]), dtype=np.float32)
            samples.append(
                fo.Sample(
                    filepath=row["filepath"],
                    ground_truth=fo.Classification(label=row["label"]),
                    split=row["split"],
                    scanner=row["scanner"],
                    emb=pixels.mean(axis=0) / 255.0,
                )
            )
        dataset.add_samples(samples, progress=False)
        dataset.save_view("my-view", dataset.limit(3))  # the user's own view and tag: no audit may touch them
        dataset.limit(1).tag_samples("reviewed")
        print(json.dumps(dict(zip(dataset.values("filepath"), dataset.values("id")))))
    """
    ids: dict[str, str] = run_python(code, env)
    return ids


SNAPSHOT_FUNCTION = """
def snapshot(name):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        return {"exists": False}
    dataset = fo.load_dataset(name)
    schema = dataset.get_field_schema()
    runs = {}
    for key in dataset.list_runs():
        results = dataset.load_run_results(key)
        config = dataset.get_run_info(key).config.serialize()
        runs[key] = {"config": config, "findings": results.findings, "metrics": results.metrics}
    views = {}
    for view_name in dataset.list_saved_views():
        view = dataset.load_saved_view(view_name)
        views[view_name] = {"ids": view.values("id"), "grouped": view._is_dynamic_groups}
    ids = dataset.values("id")
    has = set(schema).__contains__
    suggested = dataset.values("audit_suggested_label.label") if has("audit_suggested_label") else []
    return {
        "exists": True,
        "n_samples": len(dataset),
        "fields": sorted(schema),
        "field_types": {f: type(schema[f]).__name__ for f in schema},
        "tags": dataset.count_sample_tags(),
        "tag_ids": {t: dataset.match_tags(t).values("id") for t in dataset.distinct("tags")},
        "views": views,
        "runs": runs,
        "brain_runs": dataset.list_brain_runs(),
        "workspaces": dataset.list_workspaces(),
        "info": dict(dataset.info),
        "suggested": dict(zip(ids, suggested)),
        "clusters": dict(zip(ids, dataset.values("audit_cluster"))) if has("audit_cluster") else {},
    }
"""


def snapshot_dataset(name: str, env: dict[str, str]) -> dict[str, Any]:
    """Fields, tags, saved views (with their sample ids), runs with their results, read in a new process."""
    snapshot: dict[str, Any] = run_python(
        f"{SNAPSHOT_FUNCTION}\nimport json\nprint(json.dumps(snapshot({name!r})))", env
    )
    return snapshot


def run_cli_then_snapshot(
    commands: list[list[str]], name: str, env: dict[str, str]
) -> tuple[list[int], dict[str, Any]]:
    """Run `auditor` commands one after the other in ONE new interpreter, then snapshot dataset `name` there too.

    Returns the commands' exit codes and the snapshot; saves the start-up of an interpreter and of mongod per step.
    """
    code = f"""{SNAPSHOT_FUNCTION}
import json
from auditor.cli import main

codes = [main(["-q", *argv]) for argv in {commands!r}]
print(json.dumps({{"codes": codes, "snapshot": snapshot({name!r})}}))
"""
    outcome = run_python(code, env)
    return outcome["codes"], outcome["snapshot"]
