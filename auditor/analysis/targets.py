"""Influence depends on the task: harm rankings of the same training samples for several influence targets.

Harm on the validation target is `harm_score`; every further target (`--target-group animals=...`) is a
column `harm_<slug>`. For every pair of targets: Spearman's rank correlation of the two harm scores
(with a Bonett-Wright interval), the overlap of their top-k most harmful samples, and the samples in one
target's top k that rank in the less harmful half for the other ("matters for A, not for B").
With no extra target there is nothing to compare and the tables are empty. Pure compute; no I/O.
"""

from __future__ import annotations

from itertools import permutations
from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.drivers import spearman_interval
from auditor.schema import HARM_SCORE, SAMPLE_ID

HARM_PREFIX = "harm_"
VALIDATION_TARGET = "val"


def harm_target_columns(table: pd.DataFrame) -> dict[str, str]:
    """{target name: column}: `val` -> harm_score first, then each numeric `harm_<slug>` column by name."""
    columns = {VALIDATION_TARGET: HARM_SCORE} if HARM_SCORE in table else {}
    for column in sorted(table.columns):
        if column.startswith(HARM_PREFIX) and column != HARM_SCORE and pd.api.types.is_numeric_dtype(table[column]):
            columns[column[len(HARM_PREFIX) :]] = column
    return columns


class TargetComparison:
    """Compares the harm rankings of every pair of targets.

    `top_k` = max(`min_top`, `top_fraction` x scored samples). Learned: `targets_` ({name: column}),
    `correlations_` (one row per unordered pair: `first`, `second`, `n`, `spearman`, `ci_low`, `ci_high`,
    `top_overlap` = Jaccard index of the two top-k sets) and `specific_` (one row per ordered pair:
    `target`, `other`, `sample_ids` in the target's top k and the other's lower half, most harmful first).
    """

    def __init__(self, top_fraction: float = 0.05, min_top: int = 10) -> None:
        self.top_fraction = top_fraction
        self.min_top = min_top

    def fit(self, table: pd.DataFrame) -> TargetComparison:
        """`table`: the samples table with `sample_id`, `harm_score` and any `harm_<slug>` columns."""
        self.targets_ = harm_target_columns(table)
        ids = table[SAMPLE_ID].astype(str).to_numpy()
        harm = {
            name: pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for name, c in self.targets_.items()
        }
        pair_rows: list[dict[str, Any]] = []
        specific_rows: list[dict[str, Any]] = []
        names = list(self.targets_)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                both = np.isfinite(harm[first]) & np.isfinite(harm[second])
                k = max(self.min_top, round(self.top_fraction * both.sum()))
                top_a, top_b = self._top(harm[first], both, k), self._top(harm[second], both, k)
                union = len(set(top_a) | set(top_b))
                pair_rows.append(
                    {
                        "first": first,
                        "second": second,
                        **spearman_interval(harm[first], harm[second]),
                        "top_k": k,
                        "top_overlap": len(set(top_a) & set(top_b)) / union if union else np.nan,
                    }
                )
        for target, other in permutations(names, 2):
            both = np.isfinite(harm[target]) & np.isfinite(harm[other])
            if not both.any():
                continue
            k = max(self.min_top, round(self.top_fraction * both.sum()))
            top = self._top(harm[target], both, k)
            other_rank = pd.Series(harm[other][both]).rank(pct=True).to_numpy()
            percentile = np.full(len(table), np.nan)
            percentile[both] = other_rank
            specific = [row for row in top if percentile[row] <= 0.5 and harm[target][row] > 0]
            specific_rows.append(
                {
                    "target": target,
                    "other": other,
                    "top_k": k,
                    "sample_ids": ids[specific].tolist(),
                    "other_percentiles": percentile[specific].tolist(),
                }
            )
        self.correlations_ = pd.DataFrame(
            pair_rows,
            columns=["first", "second", "n", "spearman", "ci_low", "ci_high", "p_value", "top_k", "top_overlap"],
        )
        self.specific_ = pd.DataFrame(
            specific_rows, columns=["target", "other", "top_k", "sample_ids", "other_percentiles"]
        )
        return self

    @staticmethod
    def _top(values: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
        """Row positions of the k highest finite `values` among `rows`, highest first (ties by position)."""
        candidates = np.flatnonzero(rows)
        order = np.lexsort((candidates, -values[candidates]))
        return candidates[order[:k]].tolist()
