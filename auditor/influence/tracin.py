"""TracIn over checkpoints (Pruthi et al. 2020): self-influence and influence on a target set's mean loss.

Cost: one per-sample forward+backward pass over the scored rows per checkpoint, plus one batched
backward over the target rows per checkpoint. Assumes SGD-like training, where a step on z changes a
target loss by about -lr * grad(z) . grad(target).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditor.influence.gradients import iter_per_sample_grads, mean_gradient
from auditor.models.train import Checkpoint
from auditor.progress import track

logger = logging.getLogger(__name__)


@dataclass
class TracInScores:
    """Scores for the scored rows, in the order given.

    `self_influence[i]` = sum_k lr_k * |g_k(z_i)|^2.
    `harm[i]` = -sum_k lr_k * g_k(z_i) . grad_k(mean target loss): higher = training on z_i raised the
    target loss, so removing it is predicted to lower it. None when no target was given.
    `losses[k, i]` = loss of z_i at checkpoint k (training dynamics).
    """

    self_influence: np.ndarray
    harm: np.ndarray | None
    losses: np.ndarray


def compute_tracin(
    model: nn.Module,
    checkpoints: list[Checkpoint],
    pixels: torch.Tensor,
    targets: torch.Tensor,
    *,
    target_pixels: torch.Tensor | None = None,
    target_targets: torch.Tensor | None = None,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "tracin",
) -> TracInScores:
    """Score every row of `pixels`/`targets` with TracIn over `checkpoints` (loaded into `model` in turn)."""
    n = len(targets)
    self_influence = np.zeros(n, dtype=np.float64)
    harm = np.zeros(n, dtype=np.float64) if target_pixels is not None and len(target_pixels) else None
    losses = np.zeros((len(checkpoints), n), dtype=np.float64)
    batches_per_checkpoint = -(-n // batch_size)
    for k, checkpoint in enumerate(checkpoints):
        model.load_state_dict(checkpoint.state)
        target_grad = None
        if harm is not None:
            assert target_pixels is not None and target_targets is not None
            target_grad = mean_gradient(model, target_pixels, target_targets)
        batches = iter_per_sample_grads(model, pixels, targets, batch_size=batch_size)
        for rows, flat, batch_losses in track(
            batches, total=batches_per_checkpoint, desc=f"{desc} ckpt {k + 1}/{len(checkpoints)}", enabled=progress
        ):
            with torch.no_grad():
                self_influence[rows] += checkpoint.learning_rate * flat.double().pow(2).sum(1).numpy()
                losses[k, rows] = batch_losses.double().numpy()
                if harm is not None and target_grad is not None:
                    harm[rows] -= checkpoint.learning_rate * (flat.double() @ target_grad.double()).numpy()
    return TracInScores(self_influence=self_influence, harm=harm, losses=losses)
