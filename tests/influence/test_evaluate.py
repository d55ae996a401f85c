"""Retraining oracles: the Newton logistic-regression fit, subsets, LDS and removal curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.influence.evaluate import ConvexProblem, linear_datamodeling_score, random_subsets
from auditor.influence.ihvp import IHVPSettings, fit_inverse_hvp
from auditor.influence.influence_functions import compute_harm_matrix, compute_influence
from auditor.influence.objective import Objective


def _objective_gradient(problem: ConvexProblem, weights: np.ndarray, model_weight: np.ndarray, bias: np.ndarray):  # type: ignore[no-untyped-def]
    """Gradient of (1/n) sum w_i CE_i + l2/2 |theta|^2 by autograd: independent of the Newton code."""
    w = torch.tensor(model_weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    x, y = torch.from_numpy(problem.train_features), torch.from_numpy(problem.train_labels)
    losses = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="none")
    value = (torch.from_numpy(weights) * losses).sum() / len(y) + problem.l2 / 2 * (w.square().sum() + b.square().sum())
    return torch.autograd.grad(value, [w, b])


def test_newton_fit_reaches_the_weighted_optimum(convex_problem: ConvexProblem) -> None:
    weights = np.ones(len(convex_problem.train_labels))
    weights[::3] = 0.0
    model = convex_problem.fit(weights)
    for gradient in _objective_gradient(convex_problem, weights, model.weight, model.bias):
        assert float(gradient.abs().max()) < 1e-10
    warm = convex_problem.fit(weights, init=convex_problem.fit())
    np.testing.assert_allclose(warm.weight, model.weight, atol=1e-9)


def test_random_subsets_keep_the_requested_fraction() -> None:
    keep = random_subsets(41, 6, 0.5, seed=0)
    assert keep.shape == (6, 41)
    assert (keep.sum(1) == 20).all()
    assert len({row.tobytes() for row in keep}) == 6
    np.testing.assert_array_equal(keep, random_subsets(41, 6, 0.5, seed=0))


def test_lds_is_one_for_an_additive_truth_and_minus_one_reversed() -> None:
    rng = np.random.default_rng(0)
    harm = rng.normal(size=(30, 4))
    keep = random_subsets(30, 12, 0.5, seed=1)
    actual = 2.0 + 0.1 * keep @ harm
    assert linear_datamodeling_score(harm, keep, actual) == pytest.approx(1.0)
    assert linear_datamodeling_score(harm[:, 0], keep, -actual[:, 0]) == pytest.approx(-1.0)


def test_exact_influence_has_a_high_lds(regularised_convex_problem: ConvexProblem) -> None:
    problem = regularised_convex_problem
    keep = random_subsets(len(problem.train_labels), 30, 0.5, seed=0)
    actual = problem.retrain_target_losses(keep)
    objective = Objective(
        problem.fit().to_linear(), torch.from_numpy(problem.train_features), torch.from_numpy(problem.train_labels)
    )
    solver = fit_inverse_hvp(objective, IHVPSettings(method="exact", damping=problem.l2))
    target = (torch.from_numpy(problem.target_features), torch.from_numpy(problem.target_labels))
    harm = compute_influence(objective, solver, target=target, self_influence=False).harm
    assert harm is not None
    # Measured on seeds 0 and 1 of the problem: per target row 0.948, 0.944; mean target loss 0.917, 0.874.
    assert linear_datamodeling_score(compute_harm_matrix(objective, solver, target), keep, actual) >= 0.85
    assert linear_datamodeling_score(harm, keep, actual.mean(1)) >= 0.75


def test_removing_the_most_harmful_rows_lowers_the_target_loss(convex_problem: ConvexProblem) -> None:
    harm = convex_problem.leave_one_out_harm()
    by_harm = convex_problem.removal_curve(harm, [0, 1, 3])
    by_help = convex_problem.removal_curve(-harm, [0, 1, 3])
    assert by_harm[0] == pytest.approx(by_help[0])
    assert by_harm[1] == pytest.approx(by_harm[0] - harm.max(), rel=1e-9)  # one removal is leave-one-out
    assert by_harm[2] < by_harm[1] < by_harm[0] < by_help[1] < by_help[2]
