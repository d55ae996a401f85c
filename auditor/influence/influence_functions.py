"""Influence functions (Koh & Liang 2017): self-influence and harm on a target set's mean loss, per training row.

harm_i = -grad L_target^T (H + damping I)^-1 grad l_i, the derivative of the target loss with respect to
up-weighting z_i: higher = training on z_i raised the target loss, so removing it is predicted to lower
it (the project's direction, as TracIn's `harm`). Removing z_i from an n-row mean-loss objective changes
the target loss by about -harm_i / n. self_influence_i = grad l_i^T (H + damping I)^-1 grad l_i.

Cost: fitting the solver (see ihvp), one solve with one column per target set, one per-sample gradient
pass over the scored rows, and for self-influence one quadratic form per row (cheap for exact/ekfac,
a solve with one column per row for cg/lissa). Gradients are reduced block by block: never N x P.
Assumes the model is at (or near) a minimum of the damped training loss; pure compute, no I/O.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from auditor.influence.ihvp import IHVPSettings, InverseHVP, fit_inverse_hvp
from auditor.influence.objective import Objective
from auditor.progress import track

logger = logging.getLogger(__name__)


@dataclass
class InfluenceScores:
    """Scores of the scored rows, in the order given (the fields mirror TracInScores).

    `self_influence[i]` = g_i^T (H + damping I)^-1 g_i (None when not requested).
    `harm[i]` = -g_target^T (H + damping I)^-1 g_i: higher = removing z_i is predicted to lower the target
    loss. None when no target was given. `losses[i]` = loss of z_i. `target_harm[name]`: `harm` for
    each extra target set.
    """

    self_influence: np.ndarray | None
    harm: np.ndarray | None
    losses: np.ndarray
    target_harm: dict[str, np.ndarray] = field(default_factory=dict)


def compute_influence(
    objective: Objective,
    solver: InverseHVP,
    *,
    scored: tuple[torch.Tensor, torch.Tensor] | None = None,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra_targets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    self_influence: bool = True,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "influence",
) -> InfluenceScores:
    """Influence of every scored row (default: the objective's training rows) through `solver`'s inverse Hessian.

    `target` = (inputs, targets) of the set whose mean loss defines `harm`; `extra_targets` name more sets.
    All target directions are solved together (one column each) before the rows are streamed.
    """
    inputs, targets = scored if scored is not None else (objective.inputs, objective.targets)
    n = len(targets)
    sets = dict(extra_targets or {})
    if target is not None and len(target[1]):
        sets = {"\0harm": target, **sets}
    directions = None
    if sets:
        gradients = torch.stack([objective.mean_gradient(x, y) for x, y in sets.values()], dim=1)
        directions = solver.solve(gradients)
    harms = {name: np.zeros(n) for name in sets}
    self_scores = np.zeros(n) if self_influence else None
    losses = np.zeros(n)
    batches = objective.iter_grads(inputs, targets, batch_size=batch_size)
    for rows, grads, batch_losses in track(batches, total=-(-n // batch_size), desc=desc, enabled=progress):
        grads = grads.detach().to(objective.dtype)
        losses[rows] = batch_losses.detach().double().cpu().numpy()
        if directions is not None:
            dots = (grads @ directions).double().cpu().numpy()
            for column, name in enumerate(sets):
                harms[name][rows] = -dots[:, column]
        if self_scores is not None:
            self_scores[rows] = solver.quadratic_form(grads).detach().double().cpu().numpy()
    return InfluenceScores(
        self_influence=self_scores,
        harm=harms.pop("\0harm", None),
        losses=losses,
        target_harm=harms,
    )


def compute_harm_matrix(
    objective: Objective,
    solver: InverseHVP,
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    scored: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """harm[i, t] on each target row's own loss, [N, T]: T solves at once (the per-target LDS needs these).

    The column mean equals `compute_influence`'s harm on the whole target set.
    """
    target_grads = torch.cat([grads.detach() for _, grads, _ in objective.iter_grads(*target, batch_size=batch_size)])
    directions = solver.solve(target_grads.to(objective.dtype).T)
    inputs, targets = scored if scored is not None else (objective.inputs, objective.targets)
    harm = np.zeros((len(targets), len(target[1])))
    for rows, grads, _ in objective.iter_grads(inputs, targets, batch_size=batch_size):
        harm[rows] = -(grads.detach().to(objective.dtype) @ directions).double().cpu().numpy()
    return harm


def compute_head_influence(
    head: nn.Module,
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    settings: IHVPSettings,
    *,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra_targets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    scored: tuple[torch.Tensor, torch.Tensor] | None = None,
    self_influence: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> InfluenceScores:
    """Last-layer influence of a trained model: `head` (its final layer) on penultimate `train_features`.

    The Hessian is that of the head's mean cross-entropy over the training rows, so the loss is convex
    in the head's parameters and `settings.damping` can be small. Work is done in float64 on a copy of
    the head. Features are what `predict` returns as embeddings; `target`, `extra_targets` and `scored`
    are (features, labels) pairs, `scored` defaulting to the training rows.
    """

    def as_float64(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(pair[0]).double(), torch.as_tensor(pair[1]).long()

    head64 = copy.deepcopy(head).double()
    features, labels = as_float64((train_features, train_targets))
    objective = Objective(head64, features, labels, batch_size=batch_size)
    solver = fit_inverse_hvp(objective, settings)
    return compute_influence(
        objective,
        solver,
        scored=as_float64(scored) if scored is not None else None,
        target=as_float64(target) if target is not None else None,
        extra_targets={name: as_float64(pair) for name, pair in (extra_targets or {}).items()},
        self_influence=self_influence,
        batch_size=batch_size,
        progress=progress,
        desc=f"influence[{settings.method}]",
    )
