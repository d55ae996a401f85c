"""Drivers of influence: how per-sample scores (self-influence, harm) go with per-image properties and with the class.

For every (score, property) pair: Spearman's rank correlation with a Fisher-z confidence interval using
the Bonett-Wright (2000) standard error sqrt((1 + rho^2 / 2) / (n - 3)), which keeps its nominal coverage
for Spearman's rho where the Pearson formula is too narrow; and the same correlation within classes
(ranks taken inside each class), which separates "complex images are influential" from "complex classes
are influential". For the class: Kruskal-Wallis H and its effect size eta^2_H = (H - k + 1) / (n - k).
Pure compute on tables; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from auditor.schema import LABEL

DRIVER_COLUMNS = [
    "score",
    "property",
    "n",
    "spearman",
    "ci_low",
    "ci_high",
    "p_value",
    "within_class_spearman",
    "within_class_ci_low",
    "within_class_ci_high",
    "significant",
]


def spearman_interval(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Spearman's rho of the finite pairs, its Bonett-Wright Fisher-z interval and p-value."""
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 10 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return {"n": n, "spearman": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    result = stats.spearmanr(x[keep], y[keep])
    rho = float(result.statistic)
    low, high = _fisher_interval(rho, n, confidence)
    return {"n": n, "spearman": rho, "ci_low": low, "ci_high": high, "p_value": float(result.pvalue)}


def _fisher_interval(rho: float, n: int, confidence: float, dof_loss: int = 0) -> tuple[float, float]:
    """Bonett-Wright interval for a rank correlation from n pairs (less `dof_loss` estimated parameters)."""
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    se = np.sqrt((1 + rho**2 / 2) / max(n - 3 - dof_loss, 1))
    half = stats.norm.ppf(0.5 + confidence / 2) * se
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def within_group_ranks(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Ranks of `values` inside each group, centred and scaled to [-0.5, 0.5] (NaN stays NaN)."""
    out = np.full(len(values), np.nan)
    frame = pd.DataFrame({"v": values, "g": groups})
    finite = frame["v"].notna()
    ranks = frame[finite].groupby("g")["v"].rank(pct=True)
    counts = frame[finite].groupby("g")["v"].transform("count")
    out[finite.to_numpy()] = np.where(counts > 1, ranks - (1 + 1 / counts) / 2, np.nan)
    return out


class InfluenceDriverAnalysis:
    """Correlates each score column with each property column, overall and within classes.

    Learned: `drivers_` (DRIVER_COLUMNS; `significant` = the overall interval excludes 0 and
    |rho| >= `min_abs_rho`) and `class_effects_` (one row per score: `eta_squared`, `h`, `p_value`, `n`,
    `n_classes`, and the classes with the highest median score).
    """

    def __init__(
        self,
        scores: Sequence[str],
        properties: Sequence[str],
        confidence: float = 0.95,
        min_abs_rho: float = 0.1,
    ) -> None:
        self.scores = scores
        self.properties = properties
        self.confidence = confidence
        self.min_abs_rho = min_abs_rho

    def fit(self, table: pd.DataFrame) -> InfluenceDriverAnalysis:
        """`table` holds the score columns, the property columns and `label`."""
        labels = table[LABEL].astype(str).to_numpy() if LABEL in table else np.zeros(len(table)).astype(str)
        n_classes = len(np.unique(labels))
        rows: list[dict[str, Any]] = []
        for score in self.scores:
            if score not in table:
                continue
            y = pd.to_numeric(table[score], errors="coerce").to_numpy(dtype=np.float64)
            y_within = within_group_ranks(y, labels)
            for prop in self.properties:
                if prop not in table:
                    continue
                x = pd.to_numeric(table[prop], errors="coerce").to_numpy(dtype=np.float64)
                overall = spearman_interval(x, y, self.confidence)
                x_within = within_group_ranks(x, labels)
                keep = np.isfinite(x_within) & np.isfinite(y_within)
                within_rho, within_low, within_high = np.nan, np.nan, np.nan
                if keep.sum() >= 10 and np.ptp(x_within[keep]) > 0 and np.ptp(y_within[keep]) > 0:
                    within_rho = float(np.corrcoef(x_within[keep], y_within[keep])[0, 1])
                    within_low, within_high = _fisher_interval(within_rho, int(keep.sum()), self.confidence, n_classes)
                rows.append(
                    {
                        "score": score,
                        "property": prop,
                        **overall,
                        "within_class_spearman": within_rho,
                        "within_class_ci_low": within_low,
                        "within_class_ci_high": within_high,
                    }
                )
        drivers = pd.DataFrame(rows, columns=DRIVER_COLUMNS[:-1])
        drivers["significant"] = (
            (((drivers["ci_low"] > 0) | (drivers["ci_high"] < 0)) & (drivers["spearman"].abs() >= self.min_abs_rho))
            .fillna(False)
            .astype(bool)
        )
        self.drivers_ = drivers
        self.class_effects_ = pd.DataFrame(
            [self._class_effect(table, score, labels) for score in self.scores if score in table],
            columns=["score", "n", "n_classes", "h", "p_value", "eta_squared", "top_classes"],
        )
        return self

    @staticmethod
    def _class_effect(table: pd.DataFrame, score: str, labels: np.ndarray) -> dict[str, Any]:
        """Kruskal-Wallis test of `score` across classes, with eta^2_H and the classes with the highest medians."""
        values = pd.to_numeric(table[score], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(values)
        groups = [values[keep & (labels == c)] for c in np.unique(labels[keep])]
        groups = [g for g in groups if len(g)]
        n, k = int(keep.sum()), len(groups)
        if k < 2 or n <= k or np.ptp(values[keep]) == 0:
            return {
                "score": score,
                "n": n,
                "n_classes": k,
                "h": np.nan,
                "p_value": np.nan,
                "eta_squared": np.nan,
                "top_classes": [],
            }
        h, p = stats.kruskal(*groups)
        medians = pd.Series(values[keep]).groupby(labels[keep]).median().sort_values(ascending=False)
        return {
            "score": score,
            "n": n,
            "n_classes": k,
            "h": float(h),
            "p_value": float(p),
            "eta_squared": float(max((h - k + 1) / (n - k), 0.0)),
            "top_classes": [{"label": str(c), "median": float(m)} for c, m in medians.head(3).items()],
        }
