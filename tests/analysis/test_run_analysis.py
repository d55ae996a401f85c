"""The analyze stage on a run directory built in code (no training): findings, metrics and report sections."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from auditor.analysis.run import ANALYSIS_FILE, run_analysis
from auditor.influence.engine import SCORES_TABLE
from auditor.report.render import run_reports
from auditor.report.sections import build_sections
from auditor.report.tables import load_audit_tables
from auditor.store import RunStore

CLASSES = ["a", "b", "c"]


def _write(path: Path, pixels: np.ndarray) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _build_run(root: Path) -> RunStore:
    """120 colour textures in 3 classes; site s2's samples are misclassified out of fold; planted duplicates."""
    rng = np.random.default_rng(0)
    n = 120
    labels = np.array([CLASSES[i % 3] for i in range(n)])
    splits = np.where(np.arange(n) % 5 == 0, "val", "train")
    sites = np.array(["s0", "s1", "s2"])[rng.permutation(np.arange(n) % 3)]
    images = [
        np.clip(128 + 600 * ndimage.gaussian_filter(rng.normal(size=(40, 40, 3)), sigma=(2, 2, 0)), 0, 255).astype(
            np.uint8
        )
        for _ in range(n)
    ]
    images[5] = images[4].copy()  # exact copy ...
    splits[4], splits[5] = "train", "val"  # ... across splits: leakage
    images[7] = np.pad(images[6], ((1, 0), (1, 0), (0, 0)), mode="edge")[:40, :40]  # near copy ...
    splits[6], splits[7], labels[7] = "train", "val", "b" if labels[6] != "b" else "c"  # ... leaking, other label
    images[9] = np.full((40, 40, 3), 90, dtype=np.uint8)  # blank
    files = [_write(root / "images" / f"img{i:03d}.png", img) for i, img in enumerate(images)]
    samples = pd.DataFrame(
        {
            "sample_id": [f"id{i:03d}" for i in range(n)],
            "filepath": [f for f, _ in files],
            "relpath": [f"images/img{i:03d}.png" for i in range(n)],
            "split": splits,
            "label": labels,
            "meta_site": sites,
            "width": 40,
            "height": 40,
            "mode": "RGB",
            "file_bytes": [Path(f).stat().st_size for f, _ in files],
            "content_hash": [h for _, h in files],
            "brightness": [img.mean() / 255 for img in images],
        }
    )
    y = samples["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    truth = np.eye(3)[y] * 0.8 + 0.1
    wrong = np.eye(3)[(y + 1) % 3] * 0.8 + 0.1
    bad = (sites == "s2") & (rng.random(n) < 0.6)
    probs_oof = np.where(bad[:, None], wrong, truth)
    store = RunStore(root / "run")
    store.root.mkdir(parents=True)
    store.write_table("ingest_samples", samples)
    store.write_table(
        "errors", pd.DataFrame({c: pd.Series(dtype=object) for c in ("sample_id", "filepath", "stage", "error")})
    )
    store.write_array("probs_in", truth.astype(np.float32))
    store.write_array("probs_oof", probs_oof.astype(np.float32))
    store.write_array("probs_main", truth.astype(np.float32))
    store.write_array("embeddings", (np.eye(3)[y] * 5 + rng.normal(0, 1, (n, 3))).astype(np.float32))
    harm = rng.normal(size=n)
    store.write_table(
        SCORES_TABLE,
        pd.DataFrame(
            {
                "sample_id": samples["sample_id"],
                "loss": rng.exponential(size=n),
                "self_influence": rng.exponential(size=n),
                "dynamics_loss": rng.exponential(size=n),
                "oof_loss": -np.log(probs_oof[np.arange(n), y]),
                "harm_score": harm,
                "harm_animals": harm + rng.normal(0, 0.5, n),
            }
        ),
    )
    store.write_json("manifest.json", {"run_name": "planted", "settings": {}, "stages_done": []})
    return store


def test_analysis_writes_contract_findings_and_metrics(tmp_path: Path) -> None:
    store = _build_run(tmp_path)
    table = run_analysis(store, CLASSES)
    findings = {f["finding_id"]: f for f in store.read_json("findings.json")}
    metrics = store.read_json("metrics.json")
    for finding in findings.values():
        assert {"finding_id", "kind", "severity", "title", "sample_ids", "evidence", "fiftyone_view"} <= set(finding)

    slices = [f for f in findings.values() if f["kind"] == "slice"]
    assert any(f["evidence"]["column"] == "meta_site" and f["evidence"]["value"] == "s2" for f in slices)
    assert all({"n", "n_flagged", "lift", "p_value", "q_value"} <= set(f["evidence"]) for f in slices)

    groups = {tuple(f["sample_ids"]): f for f in findings.values() if f["kind"] in ("duplicate", "leakage")}
    exact, near = groups[("id004", "id005")], groups[("id006", "id007")]
    assert exact["kind"] == "leakage"
    assert exact["evidence"]["match"] == "exact"
    assert exact["evidence"]["cross_split"]
    assert near["kind"] == "leakage"
    assert near["evidence"]["match"] == "near"
    assert near["evidence"]["cross_split"]
    assert near["evidence"]["conflicting_labels"]
    assert "image-blank" in findings
    assert findings["image-blank"]["sample_ids"] == ["id009"]

    assert metrics["leakage"]["cross_split_pairs"] == 1
    assert metrics["leakage"]["near_cross_split_pairs"] == 1
    assert metrics["issues"]["near_duplicate"]["count"] == 1
    assert metrics["issues"]["image_issue"]["count"] == 0  # unreadable files, as before
    assert metrics["issues"]["image_issue"]["flagged"] == 1
    assert metrics["slices"]["significant"]["count"] >= 1
    assert metrics["targets"]["count"] == 2
    assert metrics["targets"]["rank_correlation"]["min"] > 0.5
    assert "spearman" in metrics["drivers"]["png_bits_per_pixel"]
    assert "count" in metrics["clusters"]["underperforming"]
    assert {"cluster_id", "is_near_duplicate", "is_image_issue", "png_bits_per_pixel"} <= set(table.columns)
    assert table["cluster_id"].dtype == np.int64
    assert store.has(ANALYSIS_FILE)


def test_report_renders_the_analysis_sections(tmp_path: Path) -> None:
    store = _build_run(tmp_path)
    run_analysis(store, CLASSES)
    sections = {s["name"]: s["context"] for s in build_sections(load_audit_tables(store))}
    assert {"targets", "slices", "clusters", "drivers", "image_issues"} <= set(sections)
    assert sections["targets"]["pairs"][0]["first"] == "val"
    assert any("meta_site=s2" in row["slice"] for row in sections["slices"]["slices"])
    assert [row["issue"] for row in sections["image_issues"]["rows"] if row["members"]] == ["blank"]
    html = run_reports(store)["html"].read_text(encoding="utf-8")
    assert 'id="drivers-table"' in html
    assert 'id="slices-table"' in html
