"""Tiny float64 convex problems (L2 logistic regression on Gaussian blobs) with planted flipped labels."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.influence.evaluate import ConvexProblem


def make_convex_problem(seed: int = 0, *, n: int = 40, d: int = 4, c: int = 3, l2: float = 0.01) -> ConvexProblem:
    """Blobs around random centres; rows 0-2 of the training set have a wrong (shifted) label."""
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.normal(size=(c, d))
    labels = rng.integers(0, c, n)
    features = centres[labels] + rng.normal(size=(n, d))
    labels[:3] = (labels[:3] + 1) % c
    target_labels = rng.integers(0, c, 20)
    target_features = centres[target_labels] + rng.normal(size=(20, d))
    return ConvexProblem(features, labels, target_features, target_labels, c, l2)


@pytest.fixture(scope="module")
def convex_problem() -> ConvexProblem:
    return make_convex_problem()


@pytest.fixture(scope="module")
def regularised_convex_problem() -> ConvexProblem:
    """The same data with l2 = 0.1: 50% subsets stay closer to the first-order regime."""
    return make_convex_problem(l2=0.1)
