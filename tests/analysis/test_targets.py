"""Per-target harm rankings: rank correlation, and samples that matter for one target and not another."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.analysis.targets import TargetComparison, harm_target_columns


def test_target_specific_samples_and_rank_correlation() -> None:
    rng = np.random.default_rng(0)
    n = 400
    shared = rng.normal(size=n)
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "harm_score": shared + 0.3 * rng.normal(size=n),
            "harm_animals": shared + 0.3 * rng.normal(size=n),
            "harm_vehicles": rng.normal(size=n),
            "is_harmful": False,
        }
    )
    table.loc[:9, "harm_animals"] = 10.0  # planted: top for animals ...
    table.loc[:9, "harm_vehicles"] = -10.0  # ... and harmless for vehicles
    comparison = TargetComparison(top_fraction=0.05, min_top=10).fit(table)
    assert comparison.targets_ == {"val": "harm_score", "animals": "harm_animals", "vehicles": "harm_vehicles"}
    pairs = comparison.correlations_.set_index(["first", "second"])
    assert pairs.loc[("val", "animals"), "spearman"] > 0.7
    assert pairs.loc[("animals", "vehicles"), "ci_low"] < 0.2
    specific = comparison.specific_.set_index(["target", "other"])
    assert {f"s{i:03d}" for i in range(10)} <= set(specific.loc[("animals", "vehicles"), "sample_ids"])
    assert not set(specific.loc[("vehicles", "animals"), "sample_ids"]) & {f"s{i:03d}" for i in range(10)}


def test_no_extra_target_gives_empty_comparison() -> None:
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "harm_score": [0.1, 0.2, np.nan]})
    comparison = TargetComparison().fit(table)
    assert harm_target_columns(table) == {"val": "harm_score"}
    assert comparison.correlations_.empty
    assert comparison.specific_.empty
