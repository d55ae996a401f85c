"""Slices, spurious correlations and exact duplicates on planted tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.analysis.duplicates import find_exact_duplicates
from auditor.analysis.slices import SliceScanner, SpuriousCorrelationScanner, benjamini_hochberg


def _table(seed: int = 0, n: int = 400) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c", "d"], n)
    flagged = rng.random(n) < np.where(group == "c", 0.4, 0.05)
    label = rng.choice(["x", "y", "z"], n)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": label, "meta_group": group}), flagged


def test_slice_scanner_ranks_planted_group_first() -> None:
    table, flagged = _table()
    slices = SliceScanner(min_support=10).fit(table, {"label_issue": flagged}).slices_
    top = slices.iloc[0]
    assert (top["column"], top["value"], bool(top["significant"])) == ("meta_group", "c", True)
    assert top["lift"] > 3
    assert slices["significant"].sum() == 1


def test_slice_scanner_null_table_has_no_significant_slices() -> None:
    rng = np.random.default_rng(3)
    table, _ = _table(seed=3)
    flagged = rng.random(len(table)) < 0.1
    assert not SliceScanner().fit(table, {"label_issue": flagged}).slices_["significant"].any()


def test_bh_matches_hand_computation() -> None:
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    # sorted p: 0.01, 0.03, 0.04, 0.5 -> p*n/rank: 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5], rtol=1e-9)


def test_spurious_correlation_found_and_label_hierarchy_skipped() -> None:
    rng = np.random.default_rng(0)
    n = 600
    label = rng.choice(["0", "1", "2", "3"], n)
    scanner = np.where(np.isin(label, ["0", "1"]) & (rng.random(n) < 0.7), "b", "a")
    family = np.where(np.isin(label, ["0", "1"]), "low", "high")  # a function of the label
    noise = rng.choice(["p", "q"], n)
    table = pd.DataFrame({"label": label, "meta_scanner": scanner, "meta_family": family, "meta_noise": noise})
    result = SpuriousCorrelationScanner().fit(table).correlations_.set_index("column")
    assert bool(result.loc["meta_scanner", "significant"])
    assert "meta_family" not in result.index
    assert not bool(result.loc["meta_noise", "significant"])
    cells = result.loc["meta_scanner", "over_represented"]
    assert {c["label"] for c in cells if c["value"] == "b"} == {"0", "1"}


def test_exact_duplicates_group_cross_split_and_conflicts() -> None:
    table = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d", "e"],
            "content_hash": ["h1", "h1", "h2", "h2", "h3"],
            "split": ["train", "val", "train", "train", "val"],
            "label": ["cat", "cat", "cat", "dog", "dog"],
        }
    )
    groups = {tuple(g.sample_ids): g for g in find_exact_duplicates(table)}
    assert set(groups) == {("a", "b"), ("c", "d")}
    assert groups[("a", "b")].cross_split
    assert not groups[("a", "b")].conflicting_labels
    assert groups[("a", "b")].cross_split_pairs == 1
    assert groups[("c", "d")].conflicting_labels
    assert not groups[("c", "d")].cross_split
