"""Metadata slices where flagged samples concentrate, and metadata columns that track the label.

SliceScanner: for every value of every categorical `meta_*` column, a one-sided Fisher exact test of
the flagged rate inside vs outside the slice, with Benjamini-Hochberg q-values over all tests.
SpuriousCorrelationScanner: chi-square test of independence between a metadata column and the label,
with Cramer's V; columns that are a function of the label (e.g. the alphabet of an Omniglot character)
are hierarchy, not spurious, and are skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from auditor.schema import LABEL, meta_columns

MISSING_VALUE = "(missing)"


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values, same order as `p_values`."""
    n = len(p_values)
    if n == 0:
        return p_values
    order = np.argsort(p_values)
    ranked = p_values[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(q, 0, 1)
    return out


def categorical_meta_columns(samples: pd.DataFrame, max_values: int = 50) -> list[str]:
    """`meta_*` columns with at most `max_values` distinct values (others are not slice-able as is)."""
    return [c for c in meta_columns(samples) if samples[c].nunique(dropna=True) <= max_values]


def _as_category(column: pd.Series) -> pd.Series:
    return column.astype("object").where(column.notna(), MISSING_VALUE).astype(str)


class SliceScanner:
    """Finds metadata values in which a flag (label issue, harmful, error) is over-represented."""

    def __init__(self, columns: list[str] | None = None, min_support: int = 10, alpha: float = 0.05) -> None:
        self.columns = columns
        self.min_support = min_support
        self.alpha = alpha

    def fit(self, samples: pd.DataFrame, flags: dict[str, np.ndarray]) -> SliceScanner:
        """Test every (column, value, flag); `slices_` holds one row per test with lift, p and q."""
        columns = self.columns if self.columns is not None else categorical_meta_columns(samples)
        rows = []
        for flag_name, flagged in flags.items():
            flagged = np.asarray(flagged, dtype=bool)
            total_flagged = int(flagged.sum())
            for column in columns:
                values = _as_category(samples[column]).to_numpy()
                for value in np.unique(values):
                    inside = values == value
                    n_in = int(inside.sum())
                    if n_in < self.min_support or n_in == len(values):
                        continue
                    a = int(flagged[inside].sum())
                    b = n_in - a
                    c = total_flagged - a
                    d = len(values) - n_in - c
                    rate_in = a / n_in
                    rate_out = c / max(c + d, 1)
                    p = float(stats.fisher_exact([[a, b], [c, d]], alternative="greater").pvalue) if a else 1.0
                    lift = rate_in / rate_out if rate_out > 0 else (np.inf if a else 1.0)
                    rows.append(
                        {
                            "flag": flag_name,
                            "column": column,
                            "value": str(value),
                            "n": n_in,
                            "n_flagged": a,
                            "rate": rate_in,
                            "rest_rate": rate_out,
                            "lift": float(lift),
                            "p_value": p,
                        }
                    )
        table = pd.DataFrame(
            rows, columns=["flag", "column", "value", "n", "n_flagged", "rate", "rest_rate", "lift", "p_value"]
        )
        table["q_value"] = benjamini_hochberg(table["p_value"].to_numpy(dtype=float))
        table["significant"] = (table["q_value"] < self.alpha) & (table["lift"] > 1)
        self.slices_ = table.sort_values(["significant", "q_value", "lift"], ascending=[False, True, False]).reset_index(drop=True)
        return self


class SpuriousCorrelationScanner:
    """Flags metadata columns whose values depend strongly on the class label."""

    def __init__(self, columns: list[str] | None = None, alpha: float = 0.001, min_cramers_v: float = 0.2) -> None:
        self.columns = columns
        self.alpha = alpha
        self.min_cramers_v = min_cramers_v

    def fit(self, samples: pd.DataFrame) -> SpuriousCorrelationScanner:
        """One row per column: chi2 p-value, bias-corrected Cramer's V, and the most over-represented cells."""
        columns = self.columns if self.columns is not None else categorical_meta_columns(samples)
        labels = samples[LABEL].astype(str)
        rows = []
        for column in columns:
            values = _as_category(samples[column])
            if values.nunique() < 2:
                continue
            if values.groupby(labels).nunique().max() <= 1:
                continue  # a function of the label: a hierarchy, not a spurious attribute
            table = pd.crosstab(values, labels)
            chi2, p, _, expected = stats.chi2_contingency(table.to_numpy(), correction=False)
            v = _cramers_v_corrected(float(chi2), table.to_numpy().sum(), *table.shape)
            residuals = (table.to_numpy() - expected) / np.sqrt(expected)
            top = np.argsort(residuals, axis=None)[::-1][:5]
            cells = [
                {"value": str(table.index[i // table.shape[1]]), "label": str(table.columns[i % table.shape[1]]), "residual": float(residuals.flat[i])}
                for i in top
                if residuals.flat[i] > 3
            ]
            rows.append({"column": column, "p_value": float(p), "cramers_v": v, "over_represented": cells})
        frame = pd.DataFrame(rows, columns=["column", "p_value", "cramers_v", "over_represented"])
        frame["significant"] = (frame["p_value"] < self.alpha) & (frame["cramers_v"] >= self.min_cramers_v)
        self.correlations_ = frame
        return self


def _cramers_v_corrected(chi2: float, n: int, rows: int, cols: int) -> float:
    """Bergsma (2013) bias-corrected Cramer's V."""
    phi2 = chi2 / n
    phi2_corr = max(0.0, phi2 - (cols - 1) * (rows - 1) / (n - 1))
    rows_corr = rows - (rows - 1) ** 2 / (n - 1)
    cols_corr = cols - (cols - 1) ** 2 / (n - 1)
    denom = min(rows_corr - 1, cols_corr - 1)
    return float(np.sqrt(phi2_corr / denom)) if denom > 0 else 0.0
