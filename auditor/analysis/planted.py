"""The demo's self-test: which of the problems planted in the demo dataset did the audit find?

Reads `planted.json` (written by the demo builder) and compares it with the audit's samples and findings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from auditor.schema import IS_LABEL_ISSUE, RELPATH, SAMPLE_ID, SUGGESTED_LABEL


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def score_planted(planted_path: Path, samples: pd.DataFrame, findings: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall and precision of the audit on each kind of planted problem."""
    planted = json.loads(Path(planted_path).read_text(encoding="utf-8"))
    id_of = dict(zip(samples[RELPATH], samples[SAMPLE_ID], strict=True))
    problems = []

    flips = {id_of[f["relpath"]]: f for f in planted.get("label_flips", []) if f["relpath"] in id_of}
    flagged = set(samples.loc[samples[IS_LABEL_ISSUE].astype(bool), SAMPLE_ID])
    found = flagged & set(flips)
    suggestion = dict(zip(samples[SAMPLE_ID], samples[SUGGESTED_LABEL], strict=True))
    correct_suggestions = sum(str(suggestion[s]) == str(flips[s]["true_label"]) for s in found)
    problems.append(
        {
            "name": "label_flips",
            "planted": len(flips),
            "found": len(found),
            "recall": _ratio(len(found), len(flips)),
            "precision": _ratio(len(found), len(flagged)),
            "how": f"is_label_issue; the suggested label is the true one for {correct_suggestions} of {len(found)}",
        }
    )

    # The demo plants exact copies: near-duplicate groups (natural look-alikes among the 8x8 digits) are scored apart.
    duplicate_findings = [
        f for f in findings if f["kind"] in ("duplicate", "leakage") and f["evidence"].get("match", "exact") == "exact"
    ]
    pairs = [(id_of.get(d["original"]), id_of.get(d["copy"])) for d in planted.get("duplicates", [])]
    found_pairs = sum(
        any(a in f["sample_ids"] and b in f["sample_ids"] and f["kind"] == "leakage" for f in duplicate_findings)
        for a, b in pairs
    )
    planted_ids = {s for pair in pairs for s in pair}
    true_groups = sum(bool(planted_ids & set(f["sample_ids"])) for f in duplicate_findings)
    problems.append(
        {
            "name": "cross_split_duplicates",
            "planted": len(pairs),
            "found": found_pairs,
            "recall": _ratio(found_pairs, len(pairs)),
            "precision": _ratio(true_groups, len(duplicate_findings)),
            "how": "exact content hash; reported as leakage because the copies sit in another split",
        }
    )

    group = planted.get("artifact_group")
    if group:
        bias_findings = [f for f in findings if f["kind"] == "slice"]
        naming = [f for f in bias_findings if f["evidence"].get("column") == group["column"]]
        problems.append(
            {
                "name": "artifact_group",
                "planted": 1,
                "found": int(bool(naming)),
                "recall": float(bool(naming)),
                "precision": _ratio(len(naming), len(bias_findings)),
                "how": f"slice findings naming {group['column']} (precision: share of all slice findings)",
            }
        )
    return {"problems": problems}
