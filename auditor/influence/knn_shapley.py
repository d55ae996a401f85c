"""Exact kNN-Shapley (Jia et al. 2019): each training row's Shapley value for a K-nearest-neighbour classifier.

The utility of a training subset S for a validation point is the fraction of its K nearest rows in S
(Euclidean distance, ties broken by row index) that carry the validation label, 0 for an empty S. Its
Shapley values have a closed form: with rows sorted by distance (alpha_1 nearest ... alpha_N),
    s(alpha_N) = 1[y_alpha_N = y] * min(K, N) / (N K)      (= 1[y_alpha_N = y] / N when N >= K)
    s(alpha_i) = s(alpha_{i+1}) + (1[y_alpha_i = y] - 1[y_alpha_{i+1} = y]) / K * min(K, i) / i.
Values are averaged over validation points. Higher = more VALUABLE (raises validation accuracy); the
project's harm direction is the negated value. Cost: O(T N log N) time for T validation points, memory
O(block * N): validation points are processed in blocks. Vectorised numpy; pure compute, no I/O.
"""

from __future__ import annotations

import numpy as np


def compute_knn_shapley(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    val_labels: np.ndarray,
    *,
    k: int = 10,
    block_size: int = 256,
    per_target: bool = False,
) -> np.ndarray:
    """Shapley values [N] averaged over validation points, or [T, N] (one row per point) when `per_target`."""
    if k <= 0 or block_size <= 0:
        raise ValueError(f"k and block_size must be positive, got k={k}, block_size={block_size}")
    train = np.asarray(train_embeddings, dtype=np.float64)
    val = np.asarray(val_embeddings, dtype=np.float64)
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    n = len(train)
    if n == 0 or len(val) == 0:
        raise ValueError("kNN-Shapley needs at least one training and one validation point")
    positions = np.arange(1, n)  # i = 1 .. N-1 (1-based rank of the nearer row of each adjacent pair)
    pair_weight = np.minimum(k, positions) / (k * positions)
    train_sq = np.einsum("ij,ij->i", train, train)
    total = np.zeros(n)
    rows = np.zeros((len(val), n)) if per_target else None
    for start in range(0, len(val), block_size):
        block = val[start : start + block_size]
        # Squared distances up to a per-row constant (|v|^2), which does not change the order.
        distances = train_sq[None, :] - 2.0 * block @ train.T
        order = np.argsort(distances, axis=1, kind="stable")
        match = (train_labels[order] == val_labels[start : start + block_size, None]).astype(np.float64)
        values_sorted = np.empty_like(match)
        values_sorted[:, -1] = match[:, -1] * min(k, n) / (n * k)
        steps = (match[:, :-1] - match[:, 1:]) * pair_weight
        # s(alpha_i) = s(alpha_N) + sum_{j >= i} steps_j: a reversed cumulative sum.
        values_sorted[:, :-1] = values_sorted[:, -1:] + np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
        values = np.empty_like(values_sorted)
        np.put_along_axis(values, order, values_sorted, axis=1)
        total += values.sum(0)
        if rows is not None:
            rows[start : start + len(block)] = values
    return rows if rows is not None else total / len(val)
