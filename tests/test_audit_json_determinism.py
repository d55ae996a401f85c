"""Same images + same seed, audited into two run directories -> audit.json identical byte for byte but for `created`.

audit.json names the run (the folder's basename), never the absolute run path, so CI can diff two audits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# The planted folder and the fast training settings are shared with the end-to-end pipeline tests.
from test_pipeline import FAST, planted_folder  # noqa: F401

import auditor

RELEASE_RULES = Path(__file__).resolve().parents[1] / "rules" / "release.yaml"
_CREATED = re.compile(rb'"created": "[^"]*"')


def _without_timestamps(raw: bytes) -> bytes:
    """audit.json with its one wall-clock field (manifest.created) blanked; everything else stays byte for byte."""
    blanked, n_timestamps = _CREATED.subn(b'"created": ""', raw)
    assert n_timestamps == 1, f"expected exactly one timestamp in audit.json, found {n_timestamps}"
    return blanked


def test_same_seed_gives_byte_identical_audit_json(
    planted_folder: tuple[Path, set[str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    root, _ = planted_folder
    first, second = tmp_path / "first" / "run", tmp_path / "second" / "run"
    for out in (first, second):
        auditor.audit(str(root), out=str(out), rules=str(RELEASE_RULES), **FAST)
    raw_first, raw_second = (out.joinpath("audit.json").read_bytes() for out in (first, second))

    assert _without_timestamps(raw_first) == _without_timestamps(raw_second)
    assert (first / "findings.json").read_bytes() == (second / "findings.json").read_bytes()
    audit = json.loads(raw_first)
    assert audit["manifest"]["run_name"] == "run"
    assert str(tmp_path).encode() not in raw_first, "audit.json must not depend on where the run directory lives"
    # the comparison is only meaningful if the gate judged the run and the analysis found something
    assert audit["results"]
    assert audit["verdict"] in {"pass", "warn", "fail"}
    assert audit["statistics"]["n_label_issues"] > 0
