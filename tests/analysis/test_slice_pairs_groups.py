"""Slice pairs, atypical values, bootstrap intervals of group performance, and false discoveries on null tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.analysis.slices import GroupPerformance, SliceScanner


def _pair_table(seed: int = 0, n: int = 1200) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Errors concentrate where meta_site=s2 AND meta_device=d1 only; each parent alone is ordinary."""
    rng = np.random.default_rng(seed)
    site = rng.choice(["s0", "s1", "s2"], n)
    device = rng.choice(["d0", "d1", "d2"], n)
    planted = (site == "s2") & (device == "d1")
    flagged = rng.random(n) < np.where(planted, 0.45, 0.05)
    label = rng.choice(["x", "y"], n)
    table = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(n)], "label": label, "meta_site": site, "meta_device": device}
    )
    return table, flagged, planted


def test_pair_slice_found_and_ranked_first() -> None:
    table, flagged, planted = _pair_table()
    scanner = SliceScanner().fit(table, {"misclassified": flagged})
    pairs = scanner.slices_[(scanner.slices_["kind"] == "pair") & scanner.slices_["significant"]]
    assert len(pairs) == 1
    top = pairs.iloc[0]
    assert [c["value"] for c in top["conditions"]] == ["s2", "d1"]
    members = scanner.members_[top["key"]]
    assert set(members) == set(np.flatnonzero(planted))


def test_bad_parent_does_not_make_its_pairs_significant() -> None:
    rng = np.random.default_rng(1)
    n = 1200
    site = rng.choice(["s0", "s1", "s2"], n)
    device = rng.choice(["d0", "d1", "d2"], n)
    flagged = rng.random(n) < np.where(site == "s2", 0.4, 0.05)  # the whole site is bad, no interaction
    table = pd.DataFrame({"label": rng.choice(["x", "y"], n), "meta_site": site, "meta_device": device})
    slices = SliceScanner().fit(table, {"misclassified": flagged}).slices_
    significant = slices[slices["significant"]]
    assert list(significant["kind"]) == ["value"]
    assert (significant.iloc[0]["column"], significant.iloc[0]["value"]) == ("meta_site", "s2")


def test_atypical_value_slice_catches_shortcut_failures() -> None:
    """meta_scanner tracks the label; the model fails on the samples that contradict the shortcut."""
    rng = np.random.default_rng(2)
    n = 1500
    label = rng.choice(["0", "1", "2", "3"], n)
    usual_b = np.isin(label, ["0", "1"])
    scanner = np.where(rng.random(n) < np.where(usual_b, 0.85, 0.1), "b", "a")
    contradicts = (usual_b & (scanner == "a")) | (~usual_b & (scanner == "b"))
    flagged = rng.random(n) < np.where(contradicts, 0.35, 0.04)
    table = pd.DataFrame({"label": label, "meta_scanner": scanner})
    result = SliceScanner().fit(table, {"misclassified": flagged})
    atypical = result.slices_[(result.slices_["kind"] == "atypical") & result.slices_["significant"]]
    assert set(atypical["value"]) == {"a", "b"}
    assert set(atypical["column"]) == {"meta_scanner"}
    found = np.concatenate([result.members_[k] for k in atypical["key"]])
    assert set(found) == set(np.flatnonzero(contradicts))
    assert not result.slices_.loc[result.slices_["kind"] == "value", "significant"].any()


def test_null_tables_give_at_most_one_significant_slice_in_total() -> None:
    """12 tables with 3 metadata columns (values, pairs, atypical) and 3 flags, all independent: q = 0.05."""
    total = 0
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        n = 800
        table = pd.DataFrame(
            {
                "label": rng.choice(list("abcde"), n),
                "meta_site": rng.choice(["s0", "s1", "s2", "s3"], n),
                "meta_device": rng.choice(["d0", "d1", "d2"], n),
                "meta_batch": rng.choice(["b0", "b1"], n, p=[0.8, 0.2]),
            }
        )
        flags = {
            name: rng.random(n) < rate
            for name, rate in (("label_issue", 0.05), ("misclassified", 0.12), ("harmful", 0.03))
        }
        total += int(SliceScanner().fit(table, flags).slices_["significant"].sum())
    assert total <= 1


def test_group_bootstrap_intervals_cover_the_truth() -> None:
    """Group accuracy 0.70 vs 0.90 elsewhere (true gap 0.20) and loss 1.0 vs 0.5: the 95% intervals cover them."""
    covered = {"accuracy": 0, "accuracy_gap": 0, "loss": 0}
    repeats = 20
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        group = np.r_[np.ones(300, dtype=bool), np.zeros(900, dtype=bool)]
        correct = rng.random(len(group)) < np.where(group, 0.7, 0.9)
        loss = rng.exponential(np.where(group, 1.0, 0.5))
        table = pd.DataFrame({"meta_site": np.where(group, "bad", "good")})
        row = GroupPerformance(n_boot=400, seed=seed).fit(table, correct, loss).groups_.set_index("value").loc["bad"]
        covered["accuracy"] += row["accuracy_ci_low"] <= 0.7 <= row["accuracy_ci_high"]
        covered["accuracy_gap"] += row["accuracy_gap_ci_low"] <= 0.2 <= row["accuracy_gap_ci_high"]
        covered["loss"] += row["loss_ci_low"] <= 1.0 <= row["loss_ci_high"]
        assert row["accuracy_gap_ci_low"] > 0  # the group is detectably worse every time
    assert all(count >= 16 for count in covered.values()), covered  # nominal 19 of 20
