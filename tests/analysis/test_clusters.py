"""Clusters: a planted underperforming group that no metadata names, and the influence signature's geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.analysis.clusters import ClusterFinder, compute_influence_signature, describe_clusters


def _embedding_table(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """6 classes as blobs; 40 samples of class 'c2' sit in their own region and are misclassified 60% of the time."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (6, 24))
    labels = np.repeat(np.arange(6), 150)
    features = centers[labels] + rng.normal(0, 1, (len(labels), 24))
    planted = np.zeros(len(labels), dtype=bool)
    planted[np.flatnonzero(labels == 2)[:40]] = True
    features[planted] = centers[2] + rng.normal(0, 0.5, (40, 24)) + 6 * np.eye(24)[0]
    errors = rng.random(len(labels)) < np.where(planted, 0.6, 0.05)
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i:04d}" for i in range(len(labels))],
            "label": [f"c{k}" for k in labels],
            "meta_site": rng.choice(["a", "b"], len(labels)),  # unrelated to the problem
        }
    )
    return table, features, errors, planted


def test_underperforming_cluster_recovers_group_no_metadata_names() -> None:
    table, features, errors, planted = _embedding_table()
    finder = ClusterFinder().fit(features)
    clusters = describe_clusters(table, finder.labels_, errors, finder.reduced_)
    bad = clusters[clusters["underperforming"]]
    assert len(bad) == 1
    members = set(bad.iloc[0]["members"])
    truth = set(table.loc[planted, "sample_id"])
    assert len(members & truth) / len(members) >= 0.9
    assert len(members & truth) / len(truth) >= 0.8
    assert bad.iloc[0]["classes"][0]["label"] == "c2"
    assert set(bad.iloc[0]["exemplars"]) <= members


def test_cluster_description_reports_metadata_makeup() -> None:
    table, features, errors, planted = _embedding_table(seed=1)
    table.loc[planted, "meta_site"] = "c"
    finder = ClusterFinder().fit(features)
    clusters = describe_clusters(table, finder.labels_, errors, finder.reduced_)
    bad = clusters[clusters["underperforming"]].iloc[0]
    site = next(m for m in bad["metadata"] if m["column"] == "meta_site")
    assert site["value"] == "c"
    assert site["share"] > 0.9
    assert site["overall_share"] < 0.1


def test_influence_signature_preserves_gradient_inner_products() -> None:
    """Signatures are a random projection of (p - y) outer [e, 1]: their inner products track the full ones."""
    rng = np.random.default_rng(0)
    n, n_classes, dim = 200, 5, 12
    logits = rng.normal(size=(n, n_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, n_classes, n)
    embeddings = rng.normal(size=(n, dim))
    residual = probs.copy()
    residual[np.arange(n), labels] -= 1
    full = np.einsum("nc,nd->ncd", residual, np.hstack([embeddings, np.ones((n, 1))])).reshape(n, -1)
    signature = compute_influence_signature(probs, labels, embeddings, n_components=256, seed=3)
    exact, approx = (full @ full.T)[np.triu_indices(n, 1)], (signature @ signature.T)[np.triu_indices(n, 1)]
    assert np.corrcoef(exact, approx)[0, 1] > 0.9
    again = compute_influence_signature(probs, labels, embeddings, n_components=256, seed=3)
    np.testing.assert_array_equal(signature, again)
