"""Drivers: a planted correlation is detected with an interval excluding 0; an independent property's includes 0."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.analysis.drivers import InfluenceDriverAnalysis, spearman_interval


def test_planted_and_null_drivers() -> None:
    rng = np.random.default_rng(0)
    n = 500
    complexity = rng.random(n)
    unrelated = rng.random(n)
    influence = complexity + rng.normal(0, 0.5, n)  # rank correlation about 0.5
    table = pd.DataFrame({"self_influence": influence, "complexity": complexity, "unrelated": unrelated, "label": "x"})
    drivers = (
        InfluenceDriverAnalysis(["self_influence"], ["complexity", "unrelated"])
        .fit(table)
        .drivers_.set_index("property")
    )
    assert drivers.loc["complexity", "ci_low"] > 0.3
    assert bool(drivers.loc["complexity", "significant"])
    assert drivers.loc["unrelated", "ci_low"] < 0 < drivers.loc["unrelated", "ci_high"]
    assert not bool(drivers.loc["unrelated", "significant"])


def test_interval_coverage_is_close_to_nominal() -> None:
    """Bivariate normal with Pearson 0.5: Spearman's population value is (6/pi) asin(0.25) = 0.4826."""
    truth = 6 / np.pi * np.arcsin(0.25)
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(100):
        x = rng.normal(size=120)
        y = 0.5 * x + np.sqrt(0.75) * rng.normal(size=120)
        result = spearman_interval(x, y)
        covered += result["ci_low"] <= truth <= result["ci_high"]
    assert 88 <= covered <= 100


def test_within_class_separates_class_driven_correlation() -> None:
    """Both score and property differ by class only: overall rho is large, within classes it vanishes."""
    rng = np.random.default_rng(2)
    labels = np.repeat(["a", "b", "c", "d"], 150)
    level = pd.Series(labels).map({"a": 0, "b": 1, "c": 2, "d": 3}).to_numpy(dtype=float)
    table = pd.DataFrame(
        {"label": labels, "harm_score": level + rng.normal(0, 0.3, 600), "entropy": level + rng.normal(0, 0.3, 600)}
    )
    analysis = InfluenceDriverAnalysis(["harm_score"], ["entropy"]).fit(table)
    row = analysis.drivers_.iloc[0]
    assert row["spearman"] > 0.7
    assert row["within_class_ci_low"] < 0 < row["within_class_ci_high"]
    effect = analysis.class_effects_.iloc[0]
    assert effect["eta_squared"] > 0.5
    assert effect["top_classes"][0]["label"] == "d"
