"""Task-level and instance-level influence for meta-learning (after Ren et al., "Evaluating Data Influence in
Meta Learning", ICLR 2026) and the closed-form model edit that removes tasks without retraining.

Meta-objective L(theta) = mean_t l_t(theta) + (wd/2)||theta||^2 over the T meta-training tasks, with l_t the
query loss after adaptation (through the inner loop for second-order MAML). H is its Hessian, never formed:
Hessian-vector products by double backward, solved with damped CG or a Neumann series. For deep nets away from a
minimum (negative curvature), the Gauss-Newton matrix replaces H (`curvature="gauss_newton"`, always PSD).

* task-IF: score(t) = -g_val^T (H + lambda I)^-1 (g_t - g_bar), g_t = grad l_t, g_bar = mean_t g_t. Up to the
  centring (a constant shift that keeps the ranking) this is I(t) = -g_val^T (H + lambda I)^-1 g_t. Sign: removing
  t from the mean-normalised objective moves theta by +(1/(T-1)) H^-1 (g_t - g_bar), so the validation loss
  changes by -score(t)/(T-1): higher score = removing the task is predicted to lower the validation loss.
* checkpoint-averaged task-IF (`trajectory`): the same score evaluated at each meta-training checkpoint (its own
  gradients, curvature and damping) and averaged, i.e. the removal effect averaged along the training run, as in
  TracIn (Pruthi et al. 2020) and SOURCE (Bae et al. 2024) for models trained by a stochastic optimiser and not
  to a minimum. Why (measured on Omniglot, ProtoNet, Adam, 400 steps, 20% of tasks with shuffled labels, seed
  0): the shuffled tasks start to be fitted late in training (their mean loss rises 1.93 -> 2.10 over steps
  100-300, then falls to 1.91 by step 400), and at the final iterate the cosine between their gradients and the
  validation gradient is about 0.07 (0.12-0.21 at steps 100-300; clean tasks about -0.13), so the final-point
  ranking hangs on a small projection: planted-noise recall in the top 40% was 0.825-1.0 depending on the seed
  and float noise, against 1.0 at every earlier checkpoint and for the average. Damping was not the cause
  (0.01, 0.1 or 1 x the top eigenvalue at the final point: recall 0.95-1.0 on seeds 0 and 1), nor the sign (clean
  tasks' gradients align with the validation gradient, as they should). With one point (L-BFGS to convergence,
  the exact tests) it is plain task-IF.
* instance-IF: removing image i from task t replaces l_t by l_{t without i}; lifted to the meta level the same way,
  score(t, i) = g_val^T (H + lambda I)^-1 (g_{t without i} - g_t) (exact inside the task, linear in theta).
* edit: theta_minus = theta + (H_R + lambda I)^-1 (1/(T-k)) sum_{t in R} (g_t - g_bar), H_R the Hessian of the
  objective over the T-k remaining tasks: one damped Newton step on the retraining objective from theta, assuming
  theta is stationary for the full objective. For k = 1 and T large this is theta + (1/T) H^-1 g_t (sign plus).
  H_R is replaced by the full H by default: at a minimum H is positive semi-definite, H_R need not be (CG then
  meets negative curvature and the step is useless, as measured on the tiny test problems).
Cost: one gradient per task, (iterations x HVPs over `hessian_tasks` tasks) per solve; instance scores add one
double backward and one gradient per support image for each task. Assumes theta is near a minimum of the
meta-objective; the damping absorbs small negative curvature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.errors import ConfigError
from auditor.fewshot.learners import MetaLearner, TaskBatch, drop_support

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class InfluenceSettings:
    """How the inverse-Hessian-vector products are solved."""

    damping: float = field(default=1e-3, metadata={"help": "lambda added to the Hessian's diagonal."})
    relative_damping: float | None = field(
        default=None,
        metadata={"help": "If set, lambda = this x the top curvature eigenvalue (power iteration); overrides damping."},
    )
    power_iterations: int = field(default=10, metadata={"help": "Power-iteration steps for relative damping."})
    solver: str = field(default="cg", metadata={"help": "cg (conjugate gradients) or neumann (series)."})
    curvature: str = field(
        default="hessian", metadata={"help": "hessian (exact) or gauss_newton (PSD; for deep nets off a minimum)."}
    )
    max_iter: int = field(default=100, metadata={"help": "CG iterations or Neumann terms."})
    tolerance: float = field(default=1e-10, metadata={"help": "CG stops at this relative residual."})
    neumann_scale: float = field(default=10.0, metadata={"help": "Neumann: must exceed half the top eigenvalue."})
    hessian_tasks: int | None = field(default=None, metadata={"help": "Tasks sampled for HVPs (None = all)."})
    chunk: int = field(default=8, metadata={"help": "Tasks per double-backward pass."})
    average_checkpoints: bool = field(
        default=True,
        metadata={"help": "Average task scores over the meta-training checkpoints (else: final parameters only)."},
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver not in ("cg", "neumann"):
            raise ConfigError(f"solver must be 'cg' or 'neumann', got {self.solver!r}")
        if self.curvature not in ("hessian", "gauss_newton"):
            raise ConfigError(f"curvature must be 'hessian' or 'gauss_newton', got {self.curvature!r}")
        if self.damping < 0 or self.max_iter <= 0 or self.chunk <= 0 or self.neumann_scale <= 0:
            raise ConfigError("damping must be >= 0; max_iter, chunk and neumann_scale must be positive")
        if self.relative_damping is not None and self.relative_damping <= 0:
            raise ConfigError(f"relative_damping must be positive or None, got {self.relative_damping}")
        if self.hessian_tasks is not None and self.hessian_tasks <= 0:
            raise ConfigError(f"hessian_tasks must be positive or None, got {self.hessian_tasks}")


@dataclass(frozen=True)
class SolveInfo:
    """What the linear solve did: iterations used, the final relative residual (CG) or update norm, the damping."""

    iterations: int
    residual: float
    damping: float = 0.0


@dataclass(frozen=True)
class TaskInfluence:
    """Task scores (higher = more harmful; the mean over `checkpoint_scores`, one row per parameter point, the
    final parameters last) and the vectors reused by instance scores and the edit, all at the final parameters."""

    scores: np.ndarray
    predicted_val_loss_change: np.ndarray  # -scores / (T - 1): removing task t alone
    inverse_hvp: torch.Tensor  # (H + lambda I)^-1 g_val
    mean_gradient: torch.Tensor  # g_bar
    solve: SolveInfo
    checkpoint_scores: np.ndarray  # [points, T]


def task_gradient(learner: MetaLearner, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
    """d l_t / d theta (through the adaptation for second-order MAML)."""
    point = params.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(learner.task_loss(point, task), point)
    return grad


def mean_gradient(learner: MetaLearner, params: torch.Tensor, tasks: Sequence[TaskBatch]) -> torch.Tensor:
    """mean_t d l_t / d theta, accumulated task by task (no [T, P] matrix is kept)."""
    total = torch.zeros_like(params)
    for task in tasks:
        total += task_gradient(learner, params, task)
    return total / len(tasks)


def hessian_vector_product(
    learner: MetaLearner,
    params: torch.Tensor,
    tasks: Sequence[TaskBatch],
    vector: torch.Tensor,
    *,
    weight_decay: float,
    chunk: int = 8,
) -> torch.Tensor:
    """H v for the meta-objective over `tasks` (mean task loss + wd/2 ||theta||^2), by double backward."""
    out = weight_decay * vector
    point = params.detach().requires_grad_(True)
    for start in range(0, len(tasks), chunk):
        part = tasks[start : start + chunk]
        loss = torch.stack([learner.task_loss(point, task) for task in part]).sum() / len(tasks)
        (grad,) = torch.autograd.grad(loss, point, create_graph=True)
        (hv,) = torch.autograd.grad(grad @ vector, point)
        out = out + hv
    return out


def gauss_newton_vector_product(
    learner: MetaLearner,
    params: torch.Tensor,
    tasks: Sequence[TaskBatch],
    vector: torch.Tensor,
    *,
    weight_decay: float,
) -> torch.Tensor:
    """G v with G = mean_t J_t^T H_t J_t + wd I, J_t the Jacobian of task t's adapted query logits and H_t the
    Hessian of the cross-entropy in the logits: positive semi-definite everywhere, equal to the Hessian up to the
    residual term that vanishes at a perfect fit. J v comes from the double-backward trick (d/du of u^T J v)."""
    out = weight_decay * vector
    point = params.detach().requires_grad_(True)
    for task in tasks:
        logits = learner.adapted_logits(point, task)
        probe = torch.zeros_like(logits, requires_grad=True)
        (jt_probe,) = torch.autograd.grad(logits, point, grad_outputs=probe, create_graph=True)
        (jv,) = torch.autograd.grad(jt_probe @ vector, probe)
        probs = torch.softmax(logits.detach(), dim=1)
        hjv = (probs * jv - probs * (probs * jv).sum(1, keepdim=True)) / len(task.query_y)
        (gv,) = torch.autograd.grad(logits, point, grad_outputs=hjv)
        out = out + gv / len(tasks)
    return out


def curvature_vector_product(
    learner: MetaLearner,
    params: torch.Tensor,
    tasks: Sequence[TaskBatch],
    vector: torch.Tensor,
    *,
    weight_decay: float,
    settings: InfluenceSettings,
) -> torch.Tensor:
    """The Hessian or Gauss-Newton product that `settings.curvature` selects."""
    if settings.curvature == "gauss_newton":
        return gauss_newton_vector_product(learner, params, tasks, vector, weight_decay=weight_decay)
    return hessian_vector_product(learner, params, tasks, vector, weight_decay=weight_decay, chunk=settings.chunk)


def top_eigenvalue(apply_hessian: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, iterations: int) -> float:
    """Largest eigenvalue of a PSD operator by power iteration from a fixed-seed start (deterministic)."""
    gen = torch.Generator().manual_seed(0)
    vector = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    vector /= vector.norm()
    value = 0.0
    for _ in range(iterations):
        product = apply_hessian(vector)
        value = float(vector @ product)
        norm = float(product.norm())
        if norm == 0.0:
            return 0.0
        vector = product / norm
    return value


def solve_damped(
    apply_hessian: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, settings: InfluenceSettings
) -> tuple[torch.Tensor, SolveInfo]:
    """x = (H + damping I)^-1 rhs with H given by its products; CG stops early on non-positive curvature. With
    `relative_damping`, damping is that fraction of H's top eigenvalue, so the condition number is bounded."""
    damping = settings.damping
    if settings.relative_damping is not None:
        top = top_eigenvalue(apply_hessian, rhs, settings.power_iterations)
        damping = settings.relative_damping * max(top, 0.0) or settings.damping
        logger.info("top curvature eigenvalue %.3g -> damping %.3g", top, damping)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return apply_hessian(v) + damping * v

    if settings.solver == "neumann":
        solution, info = _neumann(apply, rhs, settings)
        return solution, SolveInfo(iterations=info.iterations, residual=info.residual, damping=damping)
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rr = residual @ residual
    norm_rhs = float(rhs.norm()) or 1.0
    iterations = 0
    while iterations < settings.max_iter and float(rr.sqrt()) / norm_rhs >= settings.tolerance:
        iterations += 1
        ad = apply(direction)
        curvature = direction @ ad
        if curvature <= 0:
            logger.warning(
                "CG met non-positive curvature at iteration %d (relative residual %.2e); raise the damping (now %g)",
                iterations,
                float(rr.sqrt()) / norm_rhs,
                damping,
            )
            break
        alpha = rr / curvature
        x = x + alpha * direction
        residual = residual - alpha * ad
        rr_new = residual @ residual
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return x, SolveInfo(iterations=iterations, residual=float(rr.sqrt()) / norm_rhs, damping=damping)


def _neumann(
    apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, settings: InfluenceSettings
) -> tuple[torch.Tensor, SolveInfo]:
    """A^-1 b = (1/s) sum_k (I - A/s)^k b; converges when the eigenvalues of A lie in (0, 2s)."""
    scale = settings.neumann_scale
    x = rhs / scale
    step = float("nan")
    for _ in range(settings.max_iter):
        new = rhs / scale + x - apply(x) / scale
        step = float((new - x).norm())
        x = new
    return x, SolveInfo(iterations=settings.max_iter, residual=step / (float(x.norm()) or 1.0))


def _hessian_subset(tasks: Sequence[TaskBatch], settings: InfluenceSettings) -> list[TaskBatch]:
    """All tasks, or a seeded sample of `hessian_tasks` of them (a stochastic but fixed Hessian estimate)."""
    if settings.hessian_tasks is None or settings.hessian_tasks >= len(tasks):
        return list(tasks)
    picked = np.random.default_rng(settings.seed).choice(len(tasks), size=settings.hessian_tasks, replace=False)
    return [tasks[i] for i in np.sort(picked)]


def compute_task_influence(
    learner: MetaLearner,
    params: torch.Tensor,
    train: Sequence[TaskBatch],
    val: Sequence[TaskBatch],
    *,
    weight_decay: float,
    settings: InfluenceSettings,
    trajectory: Sequence[torch.Tensor] = (),
) -> TaskInfluence:
    """score(t) = -g_val^T (H + lambda I)^-1 (g_t - g_bar) for every meta-training task (see module docstring),
    averaged over the earlier checkpoints `trajectory` and the final `params` (points equal to `params` are
    not counted twice). Cost: one solve and T + |val| gradients per point."""
    if len(train) < 2:
        raise ConfigError("task influence needs at least two meta-training tasks")
    # The final point goes last: its inverse HVP and mean gradient are the ones returned.
    points = [point for point in trajectory if not torch.equal(point, params)] + [params]
    per_point = []
    for k, point in enumerate(points):
        scores, inverse_hvp, g_bar, info = _task_influence_at(
            learner, point, train, val, weight_decay=weight_decay, settings=settings
        )
        logger.info("task-IF at checkpoint %d/%d: damping %.3g", k + 1, len(points), info.damping)
        per_point.append(scores)
    checkpoint_scores = np.stack(per_point)
    mean_scores = checkpoint_scores.mean(0)
    return TaskInfluence(
        scores=mean_scores,
        predicted_val_loss_change=-mean_scores / (len(train) - 1),
        inverse_hvp=inverse_hvp,
        mean_gradient=g_bar,
        solve=info,
        checkpoint_scores=checkpoint_scores,
    )


def _task_influence_at(
    learner: MetaLearner,
    params: torch.Tensor,
    train: Sequence[TaskBatch],
    val: Sequence[TaskBatch],
    *,
    weight_decay: float,
    settings: InfluenceSettings,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, SolveInfo]:
    """Task-IF scores at one parameter point, with its inverse HVP, mean task gradient and solve report."""
    val_gradient = mean_gradient(learner, params, val)
    subset = _hessian_subset(train, settings)

    def apply_hessian(v: torch.Tensor) -> torch.Tensor:
        return curvature_vector_product(learner, params, subset, v, weight_decay=weight_decay, settings=settings)

    inverse_hvp, info = solve_damped(apply_hessian, val_gradient, settings)
    logger.info("task-IF solve: %d iterations, relative residual %.2e", info.iterations, info.residual)
    gradients_dot = np.empty(len(train))
    total = torch.zeros_like(params)
    for t, task in enumerate(train):
        grad = task_gradient(learner, params, task)
        total += grad
        gradients_dot[t] = float(inverse_hvp @ grad)
    g_bar = total / len(train)
    scores = -(gradients_dot - float(inverse_hvp @ g_bar))
    return scores, inverse_hvp, g_bar, info


def compute_instance_influence(
    learner: MetaLearner, params: torch.Tensor, train: Sequence[TaskBatch], inverse_hvp: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(support [T, n_support], query [T, n_query]) scores s^T (g_{t without i} - g_t), s the inverse HVP of the
    validation gradient: higher = removing the image from its task is predicted to lower the validation loss.

    Queries: the query loss is a weighted mean, so g_{t without i} - g_t = -n/(n-1) d g_t / d w_i exactly; all
    queries of a task come from one double backward. Supports enter non-linearly (a prototype, an inner loop):
    each is removed for real (`drop_support`) and its task gradient recomputed, one gradient per support image.
    """
    support_scores = np.zeros((len(train), len(train[0].support_y)))
    query_scores = np.zeros((len(train), len(train[0].query_y)))
    for t, task in enumerate(train):
        point = params.detach().requires_grad_(True)
        query_w = torch.ones(len(task.query_y), dtype=params.dtype, requires_grad=True)
        loss = learner.task_loss(point, task, None, query_w)
        (grad,) = torch.autograd.grad(loss, point, create_graph=True)
        (d_query,) = torch.autograd.grad(grad @ inverse_hvp, query_w)
        n_query = len(task.query_y)
        query_scores[t] = -n_query / (n_query - 1) * d_query.detach().cpu().numpy()
        base = float(grad.detach() @ inverse_hvp)
        for j in range(len(task.support_y)):
            reduced = drop_support(task, j)
            support_scores[t, j] = float(task_gradient(learner, params, reduced) @ inverse_hvp) - base
    return support_scores, query_scores


def edit_without_tasks(
    learner: MetaLearner,
    params: torch.Tensor,
    train: Sequence[TaskBatch],
    removed: Sequence[int] | np.ndarray,
    *,
    weight_decay: float,
    settings: InfluenceSettings,
    mean_grad: torch.Tensor | None = None,
    hessian: str = "full",
) -> tuple[torch.Tensor, SolveInfo]:
    """theta_minus = theta + (H_R + lambda I)^-1 (1/(T-k)) sum_{t in R} (g_t - g_bar): the parameters the model
    would have without the tasks at positions `removed`, with no retraining (see the module docstring)."""
    removed_set = {int(i) for i in removed}
    if not removed_set:
        return params.detach().clone(), SolveInfo(iterations=0, residual=0.0)
    remaining = [task for i, task in enumerate(train) if i not in removed_set]
    if not remaining:
        raise ConfigError("cannot remove every meta-training task")
    g_bar = mean_grad if mean_grad is not None else mean_gradient(learner, params, train)
    rhs = torch.zeros_like(params)
    for i in sorted(removed_set):
        rhs += task_gradient(learner, params, train[i]) - g_bar
    rhs /= len(remaining)
    if hessian not in ("full", "remaining"):
        raise ConfigError(f"hessian must be 'full' or 'remaining', got {hessian!r}")
    subset = _hessian_subset(list(train) if hessian == "full" else remaining, settings)

    def apply_hessian(v: torch.Tensor) -> torch.Tensor:
        return curvature_vector_product(learner, params, subset, v, weight_decay=weight_decay, settings=settings)

    step, info = solve_damped(apply_hessian, rhs, settings)
    logger.info(
        "edit solve (%d tasks removed): %d iterations, residual %.2e", len(removed_set), info.iterations, info.residual
    )
    return params.detach() + step, info
