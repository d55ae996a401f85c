"""Clusters in embedding space and in influence-signature space, and which of them the model underperforms on.

`compute_influence_signature`: the closed-form gradient of the cross-entropy loss with respect to the last
linear layer, (p - onehot(y)) outer [embedding, 1], projected to a few dozen dimensions with a seeded
sparse random projection (Li, Hastie & Church 2006) that never forms the outer product. Samples with
similar signatures push the classifier the same way (TracIn's last-layer view), whatever they look like.
`ClusterFinder`: HDBSCAN on L2-normalised features reduced by PCA (density clusters of any shape and
number; points in no cluster are noise).
`describe_clusters`: each cluster's classes, metadata make-up, exemplars, and its error rate against
the rest (one-sided Fisher exact test, Benjamini-Hochberg over the clusters of one clustering): this
finds a problem group that no metadata column names.
Pure compute on arrays and tables; no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN
from sklearn.decomposition import PCA

from auditor.analysis.slices import MIN_SUPPORT, as_category, benjamini_hochberg, fisher_greater
from auditor.schema import LABEL, SAMPLE_ID, meta_columns

NOISE = -1
N_EXEMPLARS = 8


def compute_influence_signature(
    probs: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, n_components: int = 64, seed: int = 0
) -> np.ndarray:
    """[N, n_components] random projection of each sample's last-layer loss gradient (p - y) outer [e, 1].

    The projection matrix has C x (D + 1) x n_components entries in {-s, 0, +s} with density
    1 / sqrt(C (D + 1)), so inner products of signatures approximate inner products of the full
    last-layer gradients (Johnson-Lindenstrauss). It is applied class by class, in row chunks, so
    memory stays O(chunk x C x n_components).
    """
    n, n_classes = probs.shape
    residual = probs.astype(np.float64).copy()
    residual[np.arange(n), labels] -= 1.0
    features = np.hstack([embeddings.astype(np.float64), np.ones((n, 1))])
    width = features.shape[1]
    density = 1.0 / np.sqrt(n_classes * width)
    rng = np.random.default_rng(seed)
    signs = rng.choice(
        [-1.0, 0.0, 1.0], size=(width, n_classes * n_components), p=[density / 2, 1 - density, density / 2]
    )
    signs *= np.sqrt(1.0 / (density * n_components))
    out = np.empty((n, n_components))
    for start in range(0, n, 1024):
        stop = min(start + 1024, n)
        per_class = (features[start:stop] @ signs).reshape(stop - start, n_classes, n_components)
        out[start:stop] = np.einsum("nc,nck->nk", residual[start:stop], per_class)
    return out


class ClusterFinder:
    """HDBSCAN on L2-normalised features, reduced to `n_components` dimensions by PCA first.

    `labels_` [N] cluster numbers (NOISE = -1 for points in no cluster), `probabilities_` [N] membership
    strength, `reduced_` [N, d] the space the clustering ran in.
    """

    def __init__(
        self,
        min_cluster_size: int = MIN_SUPPORT,
        min_samples: int | None = 5,
        n_components: int = 16,
        selection: str = "leaf",
        seed: int = 0,
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.n_components = n_components
        self.selection = selection
        self.seed = seed

    def fit(self, features: np.ndarray) -> ClusterFinder:
        """Cluster the rows of `features` (rows with non-finite values are noise)."""
        n = len(features)
        labels = np.full(n, NOISE, dtype=np.int64)
        probabilities = np.zeros(n)
        finite = np.isfinite(features).all(axis=1) if n else np.zeros(0, dtype=bool)
        rows = np.flatnonzero(finite)
        reduced = np.full((n, 0), np.nan)
        if len(rows) > max(self.min_cluster_size, 2):
            unit = features[rows] / np.maximum(np.linalg.norm(features[rows], axis=1, keepdims=True), 1e-12)
            dims = min(self.n_components, unit.shape[1], len(rows) - 1)
            if dims < unit.shape[1]:
                unit = PCA(n_components=dims, svd_solver="full", random_state=self.seed).fit_transform(unit)
            clustering = HDBSCAN(
                min_cluster_size=self.min_cluster_size,
                min_samples=self.min_samples,
                cluster_selection_method=self.selection,
                copy=True,
            ).fit(unit)
            labels[rows] = clustering.labels_
            probabilities[rows] = clustering.probabilities_
            reduced = np.full((n, unit.shape[1]), np.nan)
            reduced[rows] = unit
        self.labels_ = labels
        self.probabilities_ = probabilities
        self.reduced_ = reduced
        return self


def describe_clusters(
    samples: pd.DataFrame,
    labels: np.ndarray,
    errors: np.ndarray,
    reduced: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    alpha: float = 0.05,
    min_support: int = MIN_SUPPORT,
) -> pd.DataFrame:
    """One row per cluster: size, error rate vs the rest, q-value, `underperforming`, classes, metadata, exemplars.

    `labels` and `reduced` describe the rows `rows` of `samples` (all rows when None); `errors` is a
    bool per row of `samples`, so "the rest" is every other sample of the table, clustered or not.
    `predicted` (per row of `samples`) adds the cluster's most common predicted classes.
    """
    rows = np.arange(len(samples)) if rows is None else np.asarray(rows)
    errors = np.asarray(errors, dtype=bool)
    total_errors, n_total = int(errors.sum()), len(samples)
    sample_labels = samples[LABEL].astype(str).to_numpy()
    metas = {column: as_category(samples[column]).to_numpy() for column in meta_columns(samples)}
    records: list[dict[str, Any]] = []
    for cluster in sorted(set(labels.tolist()) - {NOISE}):
        members = rows[labels == cluster]
        n_in = len(members)
        a = int(errors[members].sum())
        rest_rate = (total_errors - a) / max(n_total - n_in, 1)
        rate = a / n_in
        classes = pd.Series(sample_labels[members]).value_counts()  # ties: pandas keeps first-seen order
        center = reduced[labels == cluster].mean(axis=0)
        closeness = np.linalg.norm(reduced[labels == cluster] - center, axis=1)
        exemplar_order = np.lexsort((samples[SAMPLE_ID].to_numpy()[members].astype(str), closeness))
        records.append(
            {
                "cluster": int(cluster),
                "n": n_in,
                "n_errors": a,
                "error_rate": rate,
                "rest_error_rate": rest_rate,
                "lift": rate / rest_rate if rest_rate > 0 else (np.inf if a else 1.0),
                "p_value": fisher_greater(a, n_in, total_errors - a, n_total - n_in) if n_in >= min_support else 1.0,
                "classes": _top_shares(sample_labels, members),
                "n_classes": len(classes),
                "predicted": _top_shares(predicted, members) if predicted is not None else [],
                "metadata": _metadata_makeup(metas, members),
                "exemplars": samples[SAMPLE_ID].to_numpy()[members][exemplar_order[:N_EXEMPLARS]].astype(str).tolist(),
                "members": samples[SAMPLE_ID].to_numpy()[members].astype(str).tolist(),
            }
        )
    table = pd.DataFrame(
        records,
        columns=[
            "cluster",
            "n",
            "n_errors",
            "error_rate",
            "rest_error_rate",
            "lift",
            "p_value",
            "classes",
            "n_classes",
            "predicted",
            "metadata",
            "exemplars",
            "members",
        ],
    )
    table["q_value"] = benjamini_hochberg(table["p_value"].to_numpy(dtype=float))
    table["underperforming"] = (table["q_value"] < alpha) & (table["lift"] > 1) & (table["n"] >= min_support)
    return table.sort_values(["underperforming", "q_value", "cluster"], ascending=[False, True, True]).reset_index(
        drop=True
    )


def _top_shares(values: np.ndarray, members: np.ndarray, k: int = 3) -> list[dict[str, Any]]:
    """The k most common values among `members`: `{label, count, share}`, most common first, ties by name."""
    counts = pd.Series(np.asarray(values)[members]).astype(str).value_counts()
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [{"label": str(label), "count": int(count), "share": count / len(members)} for label, count in ordered]


def _metadata_makeup(metas: dict[str, np.ndarray], members: np.ndarray) -> list[dict[str, Any]]:
    """Per metadata column, the cluster's most common value, its share in the cluster and in the whole table."""
    makeup = []
    for column, values in metas.items():
        inside = pd.Series(values[members]).value_counts()
        value = str(inside.index[0])
        makeup.append(
            {
                "column": column,
                "value": value,
                "share": float(inside.iloc[0] / len(members)),
                "overall_share": float((values == value).mean()),
            }
        )
    return sorted(makeup, key=lambda m: (-(m["share"] / max(m["overall_share"], 1e-12)), m["column"]))
