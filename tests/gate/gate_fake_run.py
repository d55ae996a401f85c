"""A small run directory for gate tests, written through RunStore, with planted per-group answers.

60 samples, classes a/b/c, splits train/val (every 4th sample is val), `meta_group` g1 (24), g2 (30), tiny (6).
Planted: every held-out sample of class c is misclassified (held-out accuracy: a 1.0, b 1.0, c 0.0); out-of-fold
predictions are wrong for the even-numbered c samples; 8 of the 9 likely mislabels are in g2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from auditor.store import RunStore

CLASSES = ("a", "b", "c")
N_SAMPLES = 60
LABEL_ISSUES = (0, 24, 25, 26, 27, 28, 29, 30, 31)
HARMFUL = (5, 6)
HOSTILE = "<script>alert('x')</script> & \"q\""


def sample_id(i: int) -> str:
    return f"s{i:03d}"


def group_of(i: int) -> str:
    return "g1" if i < 24 else ("g2" if i < 54 else "tiny")


def base_metrics() -> dict[str, Any]:
    """metrics.json of the fake run (same shape as auditor/analysis/run.py writes)."""
    return {
        "dataset": {"n_samples": N_SAMPLES, "n_classes": 3, "n_errors": 0, "split_counts": {"train": 45, "val": 15}},
        "model": {"accuracy": {"train": 1.0, "val": 0.6667}, "oof_accuracy": None},
        "issues": {
            "label_issue": {"count": len(LABEL_ISSUES), "rate": len(LABEL_ISSUES) / N_SAMPLES},
            "harmful": {"count": len(HARMFUL), "rate": len(HARMFUL) / N_SAMPLES},
            "duplicate": {"count": 1, "groups": 1},
            "image_issue": {"count": 0},
        },
        "leakage": {"cross_split_pairs": 1},
        "slices": {"significant": {"count": 2}, "worst": {"accuracy_gap": 0.4}},
        "spurious_correlation": {"count": 0},
    }


def base_findings() -> list[dict[str, Any]]:
    """findings.json of the fake run: label issues, a leakage pair and three slices (one tiny)."""
    g2 = [sample_id(i) for i in range(24, 54)]
    tiny = [sample_id(i) for i in range(54, 60)]

    def slice_finding(key: str, flag: str, members: list[str], rate: float, rest: float) -> dict[str, Any]:
        value = "g2" if members == g2 else "tiny"
        evidence = {"column": "meta_group", "value": value, "flag": flag, "n": len(members)}
        evidence |= {"n_flagged": round(rate * len(members)), "rate": rate, "rest_rate": rest}
        evidence |= {"lift": rate / rest, "p_value": 0.001, "q_value": 0.004}
        return {
            "finding_id": f"slice-{key}",
            "kind": "slice",
            "severity": "warning",
            "title": f"meta_group={value}",
            "sample_ids": members,
            "evidence": evidence,
            "fiftyone_view": None,
        }

    return [
        {
            "finding_id": "label-issues",
            "kind": "label_issue",
            "severity": "critical",
            "title": "9 likely mislabeled samples",
            "sample_ids": [sample_id(i) for i in sorted(LABEL_ISSUES, reverse=True)],
            "evidence": {},
            "fiftyone_view": None,
        },
        {
            "finding_id": "dup-1",
            "kind": "leakage",
            "severity": "critical",
            "title": "2 identical images across splits",
            "sample_ids": [sample_id(1), sample_id(3)],
            "evidence": {"match": "exact", "cross_split": True, "conflicting_labels": False},
            "fiftyone_view": None,
        },
        slice_finding("mis-g2", "misclassified", g2, 0.5, 0.1),
        slice_finding("li-g2", "label_issue", g2, 0.3, 0.05),
        slice_finding("mis-tiny", "misclassified", tiny, 0.9, 0.1),
    ]


def base_samples(root: Path) -> pd.DataFrame:
    rows = []
    for i in range(N_SAMPLES):
        label = CLASSES[i % 3]
        split = "val" if i % 4 == 3 else "train"
        wrong_held_out = label == "c" and split == "val"
        wrong_oof = label == "c" and i % 2 == 0
        other = CLASSES[(i + 1) % 3]
        rows.append(
            {
                "sample_id": sample_id(i),
                "filepath": str(root / "images" / f"{i:03d}.png"),
                "relpath": f"{i:03d}.png",
                "split": split,
                "label": label,
                "meta_group": group_of(i),
                "meta_site": None if i % 10 == 0 else ("north" if i % 2 else "south"),
                "label_issue_score": round(0.9 - i / 100, 4),
                "is_label_issue": i in LABEL_ISSUES,
                "harm_score": float(i),
                "is_harmful": i in HARMFUL,
                "predicted_label": other if wrong_held_out else label,
                "oof_predicted_label": other if wrong_oof else label,
            }
        )
    return pd.DataFrame(rows)


def write_gate_run(
    root: Path,
    *,
    metrics: dict[str, Any] | None = None,
    findings: list[dict[str, Any]] | None = None,
    samples: pd.DataFrame | None = None,
) -> RunStore:
    """Write the fake run into `root` (metrics, findings and samples replaceable) and return its store."""
    store = RunStore(root)
    store.prepare({"data": str(root / "images"), "seed": 0}, overwrite=False, tool_version="0.1.0")
    store.update_manifest(data_fingerprint="sha256:feedface", stages_done=["ingest", "train", "score", "analyze"])
    store.write_table("samples", samples if samples is not None else base_samples(root))
    store.write_json("metrics.json", metrics if metrics is not None else base_metrics())
    store.write_json("findings.json", findings if findings is not None else base_findings())
    return store


def rule(rule_id: str, metric: str, condition: str, threshold: Any, severity: str = "critical", **extra: Any) -> dict:
    """One rule entry for `write_pack`."""
    return {
        "id": rule_id,
        "metric": metric,
        "condition": condition,
        "threshold": threshold,
        "severity": severity,
    } | extra


def write_pack(path: Path, rules: list[dict[str, Any]], waivers: list[dict[str, Any]] | None = None) -> Path:
    """Write a rule pack YAML file and return its path."""
    document: dict[str, Any] = {"version": 1, "rules": rules}
    if waivers is not None:
        document["waivers"] = waivers
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
