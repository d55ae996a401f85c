"""Task- and instance-level influence against exact oracles on tiny float64 problems (L-BFGS to convergence):
dense Hessians, leave-one-task-out and leave-one-image-out retraining, planted noisy tasks, retraining after
removing the most harmful tasks."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from auditor.fewshot.episodes import plant_task_noise
from auditor.fewshot.influence import (
    InfluenceSettings,
    compute_instance_influence,
    compute_task_influence,
    edit_without_tasks,
    gauss_newton_vector_product,
    hessian_vector_product,
    solve_damped,
    task_gradient,
    top_eigenvalue,
)
from auditor.fewshot.learners import MetaLearner, TaskBatch, drop_support
from auditor.fewshot.training import evaluate_accuracy, evaluate_loss, meta_objective, train_meta
from tests.fewshot.conftest import EXACT, WEIGHT_DECAY, BlobProblem, make_learner, make_problem

logger = logging.getLogger(__name__)
SETTINGS = InfluenceSettings(damping=0.01)
LEARNERS = ["protonet", "maml"]


def _train(learner: MetaLearner, tasks: list[TaskBatch], seed: int = 0) -> torch.Tensor:
    return train_meta(learner, learner.backbone.init_params(seed, dtype=torch.float64), tasks, EXACT).params


def _retrain_from(learner: MetaLearner, start: torch.Tensor, tasks: list[TaskBatch]) -> torch.Tensor:
    """The leave-out oracle: minimise the reduced objective to convergence, warm-started at the full optimum."""
    return train_meta(learner, start, tasks, EXACT).params


def test_hessian_products_and_solvers_match_the_dense_hessian(blob_problem: BlobProblem) -> None:
    learner = make_learner("maml")
    tasks = blob_problem.train[:6]
    params = _train(learner, tasks)
    dense = torch.autograd.functional.hessian(
        lambda p: meta_objective(learner, p, tasks, weight_decay=WEIGHT_DECAY), params
    )
    vector = torch.randn(params.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hv = hessian_vector_product(learner, params, tasks, vector, weight_decay=WEIGHT_DECAY, chunk=4)
    torch.testing.assert_close(hv, dense @ vector)
    damping = 0.05
    expected = torch.linalg.solve(dense + damping * torch.eye(len(params), dtype=torch.float64), vector)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return dense @ v

    cg, info = solve_damped(apply, vector, InfluenceSettings(damping=damping))
    torch.testing.assert_close(cg, expected)
    assert info.residual < 1e-8
    top = float(torch.linalg.eigvalsh(dense).max())
    assert top_eigenvalue(apply, vector, 200) == pytest.approx(top, rel=1e-6)
    relative_settings = InfluenceSettings(relative_damping=damping / top, power_iterations=200)
    relative, info = solve_damped(apply, vector, relative_settings)
    assert info.damping == pytest.approx(damping, rel=1e-6)
    torch.testing.assert_close(relative, expected, rtol=1e-5, atol=1e-8)
    neumann_settings = InfluenceSettings(damping=damping, solver="neumann", max_iter=3000, neumann_scale=top)
    neumann, _ = solve_damped(apply, vector, neumann_settings)
    torch.testing.assert_close(neumann, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", LEARNERS)
def test_gauss_newton_product_matches_the_explicit_jacobian_form(name: str, blob_problem: BlobProblem) -> None:
    learner = make_learner(name)
    tasks = blob_problem.train[:3]
    params = learner.backbone.init_params(0, dtype=torch.float64)
    vector = torch.randn(params.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = WEIGHT_DECAY * vector
    for task in tasks:
        jacobian = torch.autograd.functional.jacobian(lambda p, t=task: learner.adapted_logits(p, t), params)
        logits = learner.adapted_logits(params, task).detach()
        jacobian = jacobian.reshape(logits.numel(), -1)
        probs = torch.softmax(logits, 1)
        blocks = [torch.diag(p) - torch.outer(p, p) for p in probs]
        hessian = torch.block_diag(*blocks) / len(task.query_y)
        expected = expected + jacobian.T @ hessian @ jacobian @ vector / len(tasks)
    got = gauss_newton_vector_product(learner, params, tasks, vector, weight_decay=WEIGHT_DECAY)
    torch.testing.assert_close(got, expected)


CURVATURES = [("protonet", "hessian"), ("maml", "hessian"), ("protonet", "gauss_newton"), ("maml", "gauss_newton")]


@functools.cache
def _leave_one_task_out(name: str) -> tuple[torch.Tensor, list[float]]:
    """Trained parameters and the actual validation-loss change of removing each task (retrained), per learner."""
    problem = make_problem()
    learner = make_learner(name)
    train, val = problem.train, problem.val
    params = _train(learner, train)
    base = evaluate_loss(learner, params, val)
    actual = [
        evaluate_loss(learner, _retrain_from(learner, params, train[:t] + train[t + 1 :]), val) - base
        for t in range(len(train))
    ]
    return params, actual


@pytest.mark.parametrize(("name", "curvature"), CURVATURES)
def test_task_influence_ranks_tasks_like_leave_one_task_out_retraining(
    name: str, curvature: str, blob_problem: BlobProblem
) -> None:
    """Measured Spearman (damping 0.01), Hessian / Gauss-Newton: protonet 0.991 / 0.992, maml (second order)
    0.970 / 0.880."""
    learner = make_learner(name)
    params, actual = _leave_one_task_out(name)
    settings = InfluenceSettings(damping=0.01, curvature=curvature)
    influence = compute_task_influence(
        learner, params, blob_problem.train, blob_problem.val, weight_decay=WEIGHT_DECAY, settings=settings
    )
    rho = spearmanr(influence.predicted_val_loss_change, actual).statistic
    logger.info("%s/%s: Spearman %.3f", name, curvature, rho)
    assert rho >= 0.8
    # The sign convention: the top-scored task is predicted to, and does, lower the validation loss when removed.
    assert actual[int(np.argmax(influence.scores))] < 0


def test_checkpoint_averaged_scores_are_the_mean_of_task_influence_at_each_checkpoint(
    blob_problem: BlobProblem,
) -> None:
    """Known answer: the averaged score is the plain mean of the per-point scores; the vectors the edit and the
    instance scores reuse come from the final point; the final point listed in the trajectory counts once."""
    learner = make_learner("protonet")
    train, val = blob_problem.train, blob_problem.val
    final = _train(learner, train)
    early = 0.5 * (final + learner.init_params(0, dtype=torch.float64))
    kwargs = {"weight_decay": WEIGHT_DECAY, "settings": SETTINGS}
    at_early = compute_task_influence(learner, early, train, val, **kwargs)
    at_final = compute_task_influence(learner, final, train, val, **kwargs)
    averaged = compute_task_influence(learner, final, train, val, **kwargs, trajectory=[early, final.clone()])
    assert averaged.checkpoint_scores.shape == (2, len(train))
    np.testing.assert_allclose(averaged.checkpoint_scores[0], at_early.scores, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(averaged.scores, (at_early.scores + at_final.scores) / 2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(averaged.predicted_val_loss_change, -averaged.scores / (len(train) - 1))
    torch.testing.assert_close(averaged.inverse_hvp, at_final.inverse_hvp)
    torch.testing.assert_close(averaged.mean_gradient, at_final.mean_gradient)
    assert not np.allclose(at_early.scores, at_final.scores)  # the two points really differ


@pytest.mark.parametrize("name", LEARNERS)
def test_planted_noisy_tasks_rank_in_the_top_40_percent_by_harm(name: str) -> None:
    """20% of tasks get shuffled labels; over two seeds (8 noisy tasks) every one lands in the top 40%."""
    found, planted = 0, 0
    for seed in (0, 1):
        problem = make_problem(seed=seed)
        noisy_tasks, noisy = plant_task_noise(problem.splits.train, fraction=0.2, seed=seed)
        train = problem.tensors(noisy_tasks)
        learner = make_learner(name)
        params = _train(learner, train, seed)
        influence = compute_task_influence(
            learner, params, train, problem.val, weight_decay=WEIGHT_DECAY, settings=SETTINGS
        )
        top = np.argsort(-influence.scores)[: round(0.4 * len(train))]
        found += int(noisy[top].sum())
        planted += int(noisy.sum())
    assert planted == 8
    assert found / planted >= 0.95


@pytest.mark.parametrize("name", LEARNERS)
def test_instance_influence_ranks_images_like_leave_one_image_out_retraining(
    name: str, blob_problem: BlobProblem
) -> None:
    """16 random (task, image) removals, half support and half query. Measured Spearman: protonet 0.98, maml 0.99."""
    learner = make_learner(name)
    train, val = blob_problem.train, blob_problem.val
    params = _train(learner, train)
    influence = compute_task_influence(learner, params, train, val, weight_decay=WEIGHT_DECAY, settings=SETTINGS)
    support_scores, query_scores = compute_instance_influence(learner, params, train, influence.inverse_hvp)
    # Known answers: a query score is exactly s^T (g_{t without i} - g_t), and a task's query scores sum to 0.
    task = train[0]
    keep = torch.arange(len(task.query_y)) != 2
    reduced = TaskBatch(task.support_x, task.support_y, task.query_x[keep], task.query_y[keep], task.ways)
    direct = (task_gradient(learner, params, reduced) - task_gradient(learner, params, task)) @ influence.inverse_hvp
    assert query_scores[0, 2] == pytest.approx(float(direct), rel=1e-8)
    assert abs(query_scores[0].sum()) <= 1e-10 * np.abs(query_scores[0]).sum()
    base = evaluate_loss(learner, params, val)
    rng = np.random.default_rng(0)
    predicted, actual = [], []
    for k in range(16):
        t = int(rng.integers(len(train)))
        task = train[t]
        if k % 2 == 0:
            i = int(rng.integers(len(task.support_y)))
            reduced, score = drop_support(task, i), support_scores[t, i]
        else:
            i = int(rng.integers(len(task.query_y)))
            keep = torch.arange(len(task.query_y)) != i
            reduced = TaskBatch(task.support_x, task.support_y, task.query_x[keep], task.query_y[keep], task.ways)
            score = query_scores[t, i]
        tasks = [*train[:t], reduced, *train[t + 1 :]]
        actual.append(evaluate_loss(learner, _retrain_from(learner, params, tasks), val) - base)
        predicted.append(-score)
    assert spearmanr(predicted, actual).statistic >= 0.8


@pytest.mark.parametrize("name", LEARNERS)
def test_edit_without_the_most_harmful_tasks_is_close_to_retraining(name: str) -> None:
    """Remove the 40% most harmful tasks (8 of 20, noisy problem). Measured on seed 0, validation loss
    original -> edit -> retrain: protonet 0.652 -> 0.512 -> 0.489, maml 0.918 -> 0.852 -> 0.847; test accuracy
    gap edit vs retrain <= 0.02; parameter error |edit - retrain| / |retrain - original| 0.48 and 0.37."""
    problem = make_problem(seed=0)
    noisy_tasks, _ = plant_task_noise(problem.splits.train, fraction=0.2, seed=0)
    train = problem.tensors(noisy_tasks)
    learner = make_learner(name)
    params = _train(learner, train)
    influence = compute_task_influence(
        learner, params, train, problem.val, weight_decay=WEIGHT_DECAY, settings=SETTINGS
    )
    removed = np.argsort(-influence.scores)[:8]
    edited, info = edit_without_tasks(
        learner, params, train, removed, weight_decay=WEIGHT_DECAY, settings=SETTINGS, mean_grad=influence.mean_gradient
    )
    assert info.residual < 1e-6
    kept = [task for i, task in enumerate(train) if i not in set(removed.tolist())]
    retrained = _retrain_from(learner, params, kept)
    original_val = evaluate_loss(learner, params, problem.val)
    edit_val = evaluate_loss(learner, edited, problem.val)
    retrain_val = evaluate_loss(learner, retrained, problem.val)
    assert retrain_val < original_val
    assert (original_val - edit_val) / (original_val - retrain_val) >= 0.75
    gap = abs(evaluate_accuracy(learner, edited, problem.test) - evaluate_accuracy(learner, retrained, problem.test))
    assert gap <= 0.03
    assert float((edited - retrained).norm() / (retrained - params).norm()) < 0.6
