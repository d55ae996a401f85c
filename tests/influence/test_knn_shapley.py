"""kNN-Shapley's closed form against brute-force Shapley values over every subset (exact oracle)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from auditor.influence.knn_shapley import compute_knn_shapley


def _utility(subset: tuple[int, ...], distances: np.ndarray, match: np.ndarray, k: int) -> float:
    """Fraction of the K nearest rows of `subset` (ties by row index) that carry the validation label."""
    nearest = sorted(subset, key=lambda row: (distances[row], row))[:k]
    return sum(match[row] for row in nearest) / k


def _brute_force_shapley(train: np.ndarray, labels: np.ndarray, point: np.ndarray, label: int, k: int) -> np.ndarray:
    n = len(train)
    distances = np.linalg.norm(train - point, axis=1)
    match = (labels == label).astype(float)
    values = np.zeros(n)
    for i in range(n):
        others = [row for row in range(n) if row != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                gain = _utility((*subset, i), distances, match, k) - _utility(subset, distances, match, k)
                values[i] += weight * gain
    return values


@pytest.mark.parametrize("k", [1, 3, 8])
def test_closed_form_equals_enumeration_over_all_subsets(k: int) -> None:
    rng = np.random.default_rng(k)
    train = rng.normal(size=(7, 2))
    train[5] = train[1]  # a duplicate: an exact distance tie, broken by row index in both
    labels = rng.integers(0, 2, 7)
    val = rng.normal(size=(3, 2))
    val_labels = np.array([0, 1, 1])
    expected = np.stack([_brute_force_shapley(train, labels, v, y, k) for v, y in zip(val, val_labels, strict=True)])
    per_point = compute_knn_shapley(train, labels, val, val_labels, k=k, block_size=2, per_target=True)
    np.testing.assert_allclose(per_point, expected, rtol=0, atol=1e-9)
    mean = compute_knn_shapley(train, labels, val, val_labels, k=k, block_size=2)
    np.testing.assert_allclose(mean, expected.mean(0), rtol=0, atol=1e-9)


def test_values_sum_to_the_full_set_utility() -> None:
    # Efficiency: Shapley values add up to U(all rows) - U(empty set) = accuracy of the K-NN vote fraction.
    rng = np.random.default_rng(0)
    train, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    val, val_labels = rng.normal(size=(9, 3)), rng.integers(0, 3, 9)
    per_point = compute_knn_shapley(train, labels, val, val_labels, k=5, per_target=True)
    for v, y, values in zip(val, val_labels, per_point, strict=True):
        nearest = np.argsort(np.linalg.norm(train - v, axis=1))[:5]
        assert values.sum() == pytest.approx(np.mean(labels[nearest] == y), abs=1e-12)
