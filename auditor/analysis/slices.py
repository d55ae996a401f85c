"""Metadata slices where flagged samples concentrate, per-group performance, and metadata that tracks the label.

SliceScanner: one-sided Fisher exact tests of the flagged rate in three kinds of slice, with weighted
Benjamini-Hochberg q-values over every test of one fit (pairs weigh a quarter of the others):
  - `value`:    one value of one `meta_*` column, against the rest of the table;
  - `pair`:     two values of two columns, against EACH parent slice (significant only when the pair is
                worse than both parents, so a bad parent does not make all its pairs significant);
  - `atypical`: a value in the classes where it is rare (e.g. `scanner_a` among the classes that mostly
                come from `scanner_b`), against the other values in those classes. Only columns that
                depend on the label are scanned this way: there a model can learn the metadata as a
                shortcut, and it fails on the samples that contradict it.
GroupPerformance: accuracy and loss of every metadata group with Poisson-bootstrap confidence intervals,
and the gap to the rest of the table.
SpuriousCorrelationScanner: chi-square test of independence between a metadata column and the label,
with Cramer's V; columns that are a function of the label (e.g. the alphabet of an Omniglot character)
are hierarchy, not spurious, and are skipped.
Pure compute on tables and arrays; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from auditor.schema import LABEL, meta_columns

MISSING_VALUE = "(missing)"
MIN_SUPPORT = 10
"""Smallest slice (in samples) the scanners test; a module default until it becomes a config option."""
DEPENDENCE_ALPHA = 0.001
"""Chi-square p-value below which a column counts as label-dependent (spurious scanner, atypical slices)."""
ATYPICAL_RESIDUAL = -2.0
"""Standardised (Pearson) residual below which a value counts as rare for a class."""
KIND_WEIGHTS = {"value": 1.0, "atypical": 1.0, "pair": 0.25}
"""Weights of the slice kinds in the weighted BH procedure: pairs are many and a priori less likely, so each
gets a quarter of the weight of a single value; the FDR over all tests stays at `alpha`."""
"""Standardised (Pearson) residual below which a value counts as rare for a class."""

SLICE_COLUMNS = [
    "key",
    "kind",
    "flag",
    "column",
    "value",
    "conditions",
    "description",
    "n",
    "n_flagged",
    "rate",
    "rest_rate",
    "lift",
    "reference_rate",
    "p_value",
]


def benjamini_hochberg(p_values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """BH-adjusted q-values, same order as `p_values`.

    With `weights` (positive, rescaled here to mean 1), the weighted procedure of Genovese, Roeder &
    Wasserman (2006): p / w is adjusted instead of p, which keeps the false discovery rate at the nominal
    level while spending more of it on the hypotheses given more weight.
    """
    n = len(p_values)
    if n == 0:
        return p_values
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        p_values = p_values / (weights / weights.mean())
    order = np.argsort(p_values)
    ranked = p_values[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(q, 0, 1)
    return out


def categorical_meta_columns(samples: pd.DataFrame, max_values: int = 50) -> list[str]:
    """`meta_*` columns with at most `max_values` distinct values (others are not slice-able as is)."""
    return [c for c in meta_columns(samples) if samples[c].nunique(dropna=True) <= max_values]


def as_category(column: pd.Series) -> pd.Series:
    """A column as text categories; missing values become the category `(missing)`."""
    return column.astype("object").where(column.notna(), MISSING_VALUE).astype(str)


_as_category = as_category  # the name earlier callers import


def fisher_greater(a: int, n_in: int, c: int, n_out: int) -> float:
    """One-sided Fisher exact p-value that the rate a/n_in exceeds c/n_out."""
    if a == 0 or n_out == 0:
        return 1.0
    return float(stats.fisher_exact([[a, n_in - a], [c, n_out - c]], alternative="greater").pvalue)


def label_dependence(values: pd.Series, labels: pd.Series) -> tuple[float, float, pd.DataFrame] | None:
    """(chi2, p, standardised residuals [value x label]) of a column vs the label; None when untestable."""
    if values.nunique() < 2 or labels.nunique() < 2:
        return None
    table = pd.crosstab(values, labels)
    chi2, p, _, expected = stats.chi2_contingency(table.to_numpy(), correction=False)
    residuals = pd.DataFrame(
        (table.to_numpy() - expected) / np.sqrt(expected), index=table.index, columns=table.columns
    )
    return float(chi2), float(p), residuals


class SliceScanner:
    """Finds metadata slices (values, pairs of values, atypical values) where a flag is over-represented.

    `slices_` has one row per test (see SLICE_COLUMNS, plus `q_value` and `significant`), most
    significant first; `members_[key]` holds the row positions of each slice's samples.
    """

    def __init__(
        self,
        columns: list[str] | None = None,
        min_support: int = MIN_SUPPORT,
        alpha: float = 0.05,
        pairs: bool = True,
        atypical: bool = True,
    ) -> None:
        self.columns = columns
        self.min_support = min_support
        self.alpha = alpha
        self.pairs = pairs
        self.atypical = atypical

    def fit(self, samples: pd.DataFrame, flags: dict[str, np.ndarray]) -> SliceScanner:
        """Test every candidate slice for every flag; q-values are adjusted over all of them together."""
        columns = self.columns if self.columns is not None else categorical_meta_columns(samples)
        candidates = self._candidates(samples, columns)
        rows: list[dict[str, Any]] = []
        members: dict[str, np.ndarray] = {}
        n = len(samples)
        for flag_name, raw in flags.items():
            flagged = np.asarray(raw, dtype=bool)
            total = int(flagged.sum())
            for candidate in candidates:
                inside = candidate["mask"]
                n_in = int(inside.sum())
                a = int(flagged[inside].sum())
                c = total - a
                rate_in, rate_out = a / n_in, c / max(n - n_in, 1)
                # The binding reference is the one the slice beats least clearly (largest p-value).
                p_value, reference_rate = fisher_greater(a, n_in, c, n - n_in), rate_out
                if candidate["references"]:
                    p_value = -1.0
                    for reference in candidate["references"]:
                        others = reference & ~inside
                        n_ref, ref_flagged = int(others.sum()), int(flagged[others].sum())
                        p = fisher_greater(a, n_in, ref_flagged, n_ref)
                        if p > p_value:
                            p_value, reference_rate = p, ref_flagged / max(n_ref, 1)
                key = f"{flag_name}|{candidate['key']}"
                members[key] = np.flatnonzero(inside)
                rows.append(
                    {
                        "key": key,
                        "kind": candidate["kind"],
                        "flag": flag_name,
                        "column": candidate["column"],
                        "value": candidate["value"],
                        "conditions": candidate["conditions"],
                        "description": candidate["description"],
                        "n": n_in,
                        "n_flagged": a,
                        "rate": rate_in,
                        "rest_rate": rate_out,
                        "lift": float(rate_in / rate_out) if rate_out > 0 else (np.inf if a else 1.0),
                        "reference_rate": reference_rate,
                        "p_value": p_value,
                    }
                )
        table = pd.DataFrame(rows, columns=SLICE_COLUMNS)
        weights = table["kind"].map(KIND_WEIGHTS).to_numpy(dtype=float)
        table["q_value"] = benjamini_hochberg(table["p_value"].to_numpy(dtype=float), weights)
        table["significant"] = (
            (table["q_value"] < self.alpha) & (table["lift"] > 1) & (table["rate"] > table["reference_rate"])
        )
        self.slices_ = table.sort_values(
            ["significant", "q_value", "lift", "key"], ascending=[False, True, False, True]
        ).reset_index(drop=True)
        self.members_ = members
        return self

    def _candidates(self, samples: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
        """Every slice to test: masks, the reference sets its test compares against, and its description."""
        n = len(samples)
        values = {column: as_category(samples[column]).to_numpy() for column in columns}
        seen: set[bytes] = set()
        out: list[dict[str, Any]] = []

        def add(mask: np.ndarray, **fields: Any) -> None:
            n_in = int(mask.sum())
            signature = np.packbits(mask).tobytes()
            if n_in < self.min_support or n_in == n or signature in seen:
                return
            seen.add(signature)
            out.append({"mask": mask, **fields})

        singles: dict[str, list[tuple[str, np.ndarray]]] = {}
        for column in columns:
            singles[column] = []
            for value in np.unique(values[column]):
                mask = values[column] == value
                add(
                    mask,
                    kind="value",
                    key=f"{column}={value}",
                    column=column,
                    value=str(value),
                    conditions=[{"column": column, "value": str(value)}],
                    description=f"{column}={value}",
                    references=[],
                )
                if self.min_support <= mask.sum() < n:
                    singles[column].append((str(value), mask))
        if self.pairs:
            for first, second in combinations(columns, 2):
                for value_a, mask_a in singles[first]:
                    for value_b, mask_b in singles[second]:
                        mask = mask_a & mask_b
                        if mask.sum() == mask_a.sum() or mask.sum() == mask_b.sum():
                            continue  # one value implies the other: the pair is a single slice
                        add(
                            mask,
                            kind="pair",
                            key=f"{first}={value_a}&{second}={value_b}",
                            column=first,
                            value=value_a,
                            conditions=[{"column": first, "value": value_a}, {"column": second, "value": value_b}],
                            description=f"{first}={value_a} & {second}={value_b}",
                            references=[mask_a, mask_b],
                        )
        if self.atypical and LABEL in samples:
            labels = samples[LABEL].astype(str)
            label_values = labels.to_numpy()
            for column in columns:
                dependence = label_dependence(pd.Series(values[column]), labels.reset_index(drop=True))
                if dependence is None or dependence[1] >= DEPENDENCE_ALPHA:
                    continue
                residuals = dependence[2]
                for value in residuals.index:
                    rare_in = sorted(
                        str(c) for c in residuals.columns[(residuals.loc[value] < ATYPICAL_RESIDUAL).to_numpy()]
                    )
                    if not rare_in:
                        continue
                    in_classes = np.isin(label_values, rare_in)
                    mask = in_classes & (values[column] == value)
                    shown = ", ".join(rare_in[:5]) + (" ..." if len(rare_in) > 5 else "")
                    add(
                        mask,
                        kind="atypical",
                        key=f"{column}={value}@{'|'.join(rare_in)}",
                        column=column,
                        value=str(value),
                        conditions=[{"column": column, "value": str(value)}, {"column": LABEL, "values": rare_in}],
                        description=f"{column}={value} in classes where it is rare ({shown})",
                        references=[in_classes],
                    )
        return out


class GroupPerformance:
    """Accuracy and mean loss of every metadata group, and its gap to the rest, with bootstrap intervals.

    One Poisson bootstrap (every row weighted by an independent Poisson(1) count per replicate) serves
    all groups and columns at once; it approximates the multinomial bootstrap closely for n >= 20.
    `groups_` has one row per (column, value) with at least `min_support` samples:
    `accuracy`, `accuracy_ci_low/high`, `rest_accuracy`, `accuracy_gap` (rest minus group: positive =
    the group is worse) with `accuracy_gap_ci_low/high`, and the same for `loss` (`loss_gap` = group
    minus rest).
    """

    def __init__(
        self,
        columns: list[str] | None = None,
        min_support: int = MIN_SUPPORT,
        n_boot: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        self.columns = columns
        self.min_support = min_support
        self.n_boot = n_boot
        self.confidence = confidence
        self.seed = seed

    def fit(self, samples: pd.DataFrame, correct: np.ndarray, loss: np.ndarray | None = None) -> GroupPerformance:
        """`correct`: bool per row (NaN-free); `loss`: float per row (NaN rows are left out of loss figures)."""
        columns = self.columns if self.columns is not None else categorical_meta_columns(samples)
        correct = np.asarray(correct, dtype=np.float64)
        loss_values = np.full(len(samples), np.nan) if loss is None else np.asarray(loss, dtype=np.float64)
        has_loss = np.isfinite(loss_values)
        loss_filled = np.where(has_loss, loss_values, 0.0)
        weights = np.random.default_rng(self.seed).poisson(1.0, (self.n_boot, len(samples))).astype(np.float32)
        tail = (1 - self.confidence) / 2
        rows = []
        for column in columns:
            values = as_category(samples[column]).to_numpy()
            for value in np.unique(values):
                inside = values == value
                n_in = int(inside.sum())
                if n_in < self.min_support or n_in == len(values):
                    continue
                acc_in, acc_out = _weighted_means(weights, correct, inside)
                loss_in, loss_out = _weighted_means(weights, loss_filled, inside, has_loss)
                row: dict[str, Any] = {"column": column, "value": str(value), "n": n_in}
                row.update(_estimate("accuracy", correct[inside].mean(), acc_in, tail))
                row["rest_accuracy"] = float(correct[~inside].mean())
                row.update(_estimate("accuracy_gap", row["rest_accuracy"] - row["accuracy"], acc_out - acc_in, tail))
                if has_loss[inside].any() and has_loss[~inside].any():
                    point_in = float(loss_values[inside & has_loss].mean())
                    point_out = float(loss_values[~inside & has_loss].mean())
                    row.update(_estimate("loss", point_in, loss_in, tail))
                    row["rest_loss"] = point_out
                    row.update(_estimate("loss_gap", point_in - point_out, loss_in - loss_out, tail))
                rows.append(row)
        frame = pd.DataFrame(rows)
        if len(frame):
            frame = frame.sort_values(["accuracy_gap", "column", "value"], ascending=[False, True, True])
        self.groups_ = frame.reset_index(drop=True)
        return self


def _weighted_means(
    weights: np.ndarray, values: np.ndarray, inside: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates [B] of the mean of `values` inside and outside the group."""
    valid = np.ones(len(values), dtype=bool) if valid is None else valid
    w_in = weights[:, inside & valid]
    w_out = weights[:, ~inside & valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = (w_in @ values[inside & valid]) / w_in.sum(1)
        mean_out = (w_out @ values[~inside & valid]) / w_out.sum(1)
    return mean_in, mean_out


def _estimate(name: str, point: float, replicates: np.ndarray, tail: float) -> dict[str, float]:
    """Point estimate and percentile interval of the finite bootstrap replicates."""
    finite = replicates[np.isfinite(replicates)]
    low, high = np.quantile(finite, [tail, 1 - tail]) if len(finite) else (np.nan, np.nan)
    return {name: float(point), f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}


class SpuriousCorrelationScanner:
    """Flags metadata columns whose values depend strongly on the class label."""

    def __init__(
        self, columns: list[str] | None = None, alpha: float = DEPENDENCE_ALPHA, min_cramers_v: float = 0.2
    ) -> None:
        self.columns = columns
        self.alpha = alpha
        self.min_cramers_v = min_cramers_v

    def fit(self, samples: pd.DataFrame) -> SpuriousCorrelationScanner:
        """One row per column: chi2 p-value, bias-corrected Cramer's V, and the most over-represented cells."""
        columns = self.columns if self.columns is not None else categorical_meta_columns(samples)
        labels = samples[LABEL].astype(str)
        rows = []
        for column in columns:
            values = as_category(samples[column])
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
                {
                    "value": str(table.index[i // table.shape[1]]),
                    "label": str(table.columns[i % table.shape[1]]),
                    "residual": float(residuals.flat[i]),
                }
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
