"""`auditor audit --rules` on a tiny image folder: the report stage gates the run; exit codes; determinism."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from gate_fake_run import rule, write_pack
from PIL import Image

from auditor.cli import main

FAST = ["--epochs", "2", "--checkpoints", "1", "--batch-size", "16", "--folds", "0", "--no-fiftyone"]
CREATED = re.compile(rb'"created": "[^"]*"')


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 10 grey 8x8 images with a class-specific bright band; one exact copy across classes."""
    root = tmp_path_factory.mktemp("images")
    for label, name in enumerate(("a", "b")):
        for i in range(10):
            rng = np.random.default_rng(100 * label + i)
            pixels = rng.integers(0, 60, (8, 8))
            pixels[label * 4 : label * 4 + 3, :] += 180
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def _audit(folder: Path, out: Path, pack: Path) -> int:
    return main(["-q", "audit", str(folder), "--out", str(out), "--rules", str(pack), *FAST])


def test_audit_with_rules_gates_the_run(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passing = write_pack(tmp_path / "pass.yaml", [rule("size", "dataset.n_samples", "eq", 20)])
    failing = write_pack(tmp_path / "fail.yaml", [rule("size", "dataset.n_samples", "gt", 1000)])
    assert _audit(image_folder, tmp_path / "run", passing) == 0
    first = (tmp_path / "run" / "audit.json").read_bytes()
    assert b'"verdict": "pass"' in first
    assert (tmp_path / "run" / "audit.junit.xml").is_file()
    # resuming the finished run with another pack judges it again (only the report stage reruns)
    assert _audit(image_folder, tmp_path / "run", failing) == 1
    assert "gate fail" in capsys.readouterr().out
    assert b'"verdict": "fail"' in (tmp_path / "run" / "audit.json").read_bytes()
    # same data, same seed, a fresh run (same run name): audit.json identical apart from the timestamp
    assert _audit(image_folder, tmp_path / "again" / "run", passing) == 0
    second = (tmp_path / "again" / "run" / "audit.json").read_bytes()
    assert CREATED.sub(b"", second) == CREATED.sub(b"", first)


def test_bad_rule_file_fails_before_any_work(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [", encoding="utf-8")
    assert _audit(image_folder, tmp_path / "run", bad) == 2
    assert f"auditor: error: {bad}: malformed YAML" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
