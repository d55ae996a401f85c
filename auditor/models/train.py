"""Seeded, deterministic training of a proxy model that keeps checkpoints for TracIn.

Pure compute: returns the checkpoints and the training log; the pipeline decides where they are stored.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from auditor.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Hyper-parameters of one proxy training."""

    epochs: int
    batch_size: int
    learning_rate: float
    checkpoints: int
    seed: int
    weight_decay: float = 5e-4
    momentum: float = 0.9


@dataclass
class Checkpoint:
    """Model state after `epoch` epochs and the mean learning rate used since the previous checkpoint."""

    epoch: int
    learning_rate: float
    state: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    """Checkpoints in training order (the last one is the final model) and the per-epoch log."""

    checkpoints: list[Checkpoint]
    log: list[dict[str, float]] = field(default_factory=list)


def checkpoint_epochs(epochs: int, n_checkpoints: int) -> list[int]:
    """Evenly spaced epochs (1-based) at which to keep a checkpoint; always includes the last epoch."""
    n = min(n_checkpoints, epochs)
    return sorted({round(epochs * (i + 1) / n) for i in range(n)})


def _lr_at(step: int, total_steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 5% of the peak."""
    warmup = max(1, total_steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [N, C, H, W] -> float in [-1, 1] (the proxy models' input convention)."""
    return pixels.float().div(127.5).sub(1.0)


def train_model(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    settings: TrainSettings,
    *,
    desc: str = "train",
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place with SGD (momentum, weight decay, warm-up + cosine) on `pixels`/`targets`.

    Deterministic for a seed on a given machine: data order comes from a seeded generator and every
    batch is processed in the same order. Keeps `settings.checkpoints` evenly spaced checkpoints.
    """
    n = len(targets)
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    steps_per_epoch = max(1, -(-n // settings.batch_size))
    total_steps = steps_per_epoch * settings.epochs
    keep = set(checkpoint_epochs(settings.epochs, settings.checkpoints))
    result = TrainResult(checkpoints=[])
    lrs_since_checkpoint: list[float] = []
    step = 0
    for epoch in track(range(1, settings.epochs + 1), total=settings.epochs, desc=desc, enabled=progress):
        model.train()
        order = torch.randperm(n, generator=generator)
        total_loss, total_correct = 0.0, 0
        for start in range(0, n, settings.batch_size):
            index = order[start : start + settings.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a single sample
                continue
            lr = _lr_at(step, total_steps, settings.learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lrs_since_checkpoint.append(lr)
            logits = model(to_float(pixels[index]))
            loss = nn.functional.cross_entropy(logits, targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += float(loss.detach()) * len(index)
            total_correct += int((logits.argmax(1) == targets[index]).sum())
        entry = {"epoch": float(epoch), "loss": total_loss / n, "accuracy": total_correct / n}
        result.log.append(entry)
        if on_epoch is not None:
            on_epoch(epoch, entry["loss"])
        if epoch in keep:
            state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            mean_lr = float(np.mean(lrs_since_checkpoint)) if lrs_since_checkpoint else settings.learning_rate
            result.checkpoints.append(Checkpoint(epoch=epoch, learning_rate=mean_lr, state=state))
            lrs_since_checkpoint = []
    logger.info(
        "%s: %d epochs, final train loss %.3f, accuracy %.3f",
        desc,
        settings.epochs,
        result.log[-1]["loss"],
        result.log[-1]["accuracy"],
    )
    return result


@torch.no_grad()
def predict(model: nn.Module, pixels: torch.Tensor, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode softmax probabilities [N, C] (float64) and penultimate embeddings [N, D] (float32)."""
    model.eval()
    probs: list[np.ndarray] = []
    embeds: list[np.ndarray] = []
    for start in range(0, len(pixels), batch_size):
        x = to_float(pixels[start : start + batch_size])
        features = model.embed(x)  # type: ignore[operator]
        logits = model.head(features)  # type: ignore[operator]
        probs.append(torch.softmax(logits.double(), dim=1).numpy())
        embeds.append(features.float().numpy())
    return np.concatenate(probs), np.concatenate(embeds)
