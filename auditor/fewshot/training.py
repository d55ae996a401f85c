"""Meta-training on a fixed task set, with checkpoints, and few-shot accuracy on held-out tasks.

The meta-objective is L(theta) = mean_t loss_t(theta) + (weight_decay / 2) ||theta||^2; the L2 term is part of
the objective (not decoupled) so that the influence code differentiates exactly what training minimised.
`adam` draws meta-batches of tasks (cost: steps * meta_batch task losses); `lbfgs` minimises the full-batch
objective to a tight tolerance (tiny float64 problems, used by the exact tests).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.errors import ConfigError
from auditor.fewshot.learners import MetaLearner, TaskBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MetaTrainSettings:
    """How to minimise the meta-objective."""

    optimizer: str = field(default="adam", metadata={"help": "adam (meta-batches) or lbfgs (full batch, exact)."})
    steps: int = field(default=500, metadata={"help": "Adam steps, or L-BFGS iterations."})
    meta_batch: int = field(default=8, metadata={"help": "Tasks per Adam step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam step size, or L-BFGS initial step."})
    weight_decay: float = field(default=1e-4, metadata={"help": "L2 coefficient inside the meta-objective."})
    checkpoints: int = field(default=3, metadata={"help": "Parameter snapshots kept (evenly spaced, last = final)."})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "lbfgs"):
            raise ConfigError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if self.steps <= 0 or self.meta_batch <= 0 or self.checkpoints <= 0:
            raise ConfigError("steps, meta_batch and checkpoints must be positive")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class MetaTrainResult:
    """Final parameters, the checkpoints (step, parameters) and the meta-loss per step."""

    params: torch.Tensor
    checkpoints: list[tuple[int, torch.Tensor]]
    losses: list[float]


def meta_objective(
    learner: MetaLearner, params: torch.Tensor, tasks: Sequence[TaskBatch], *, weight_decay: float
) -> torch.Tensor:
    """mean_t loss_t(params) + (weight_decay / 2) ||params||^2."""
    total = torch.stack([learner.task_loss(params, task) for task in tasks]).mean()
    return total + 0.5 * weight_decay * params.pow(2).sum()


def train_meta(
    learner: MetaLearner, initial: torch.Tensor, tasks: Sequence[TaskBatch], settings: MetaTrainSettings
) -> MetaTrainResult:
    """Minimise the meta-objective over `tasks` from `initial`; deterministic for a given settings.seed."""
    if not tasks:
        raise ConfigError("meta-training needs at least one task")
    params = initial.detach().clone().requires_grad_(True)
    keep = set(np.linspace(0, settings.steps, settings.checkpoints + 1).round().astype(int)[1:].tolist())
    checkpoints: list[tuple[int, torch.Tensor]] = []
    losses: list[float] = []
    if settings.optimizer == "lbfgs":
        _run_lbfgs(learner, params, tasks, settings, losses)
        checkpoints.append((settings.steps, params.detach().clone()))
        return MetaTrainResult(params=params.detach().clone(), checkpoints=checkpoints, losses=losses)
    optimizer = torch.optim.Adam([params], lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(tasks))
    cursor = 0
    for step in range(1, settings.steps + 1):
        if cursor + settings.meta_batch > len(order):
            order, cursor = rng.permutation(len(tasks)), 0
        batch = [tasks[i] for i in order[cursor : cursor + settings.meta_batch]]
        cursor += settings.meta_batch
        optimizer.zero_grad()
        loss = meta_objective(learner, params, batch, weight_decay=settings.weight_decay)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step in keep:
            checkpoints.append((step, params.detach().clone()))
        if step % max(1, settings.steps // 10) == 0:
            logger.debug("meta step %d/%d loss %.4f", step, settings.steps, float(np.mean(losses[-20:])))
    return MetaTrainResult(params=params.detach().clone(), checkpoints=checkpoints, losses=losses)


def _run_lbfgs(
    learner: MetaLearner,
    params: torch.Tensor,
    tasks: Sequence[TaskBatch],
    settings: MetaTrainSettings,
    losses: list[float],
) -> None:
    optimizer = torch.optim.LBFGS(
        [params],
        lr=settings.learning_rate,
        max_iter=settings.steps,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = meta_objective(learner, params, tasks, weight_decay=settings.weight_decay)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)


def evaluate_accuracy(learner: MetaLearner, params: torch.Tensor, tasks: Sequence[TaskBatch]) -> float:
    """Mean query accuracy over `tasks` after adaptation (the few-shot accuracy)."""
    correct = 0
    total = 0
    for task in tasks:
        predicted = learner.query_logits(params, task).argmax(1)
        correct += int((predicted == task.query_y).sum())
        total += len(task.query_y)
    return correct / max(total, 1)


def evaluate_loss(learner: MetaLearner, params: torch.Tensor, tasks: Sequence[TaskBatch]) -> float:
    """Mean query loss over `tasks` (no L2 term): the validation objective the influence scores predict."""
    values = [float(learner.task_loss(params.detach(), task).detach()) for task in tasks]
    return float(np.mean(values))
