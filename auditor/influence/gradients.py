"""Per-sample loss gradients with `torch.func` (vmap over grad), BatchNorm evaluated with running statistics.

Gradients are never stored whole: callers reduce each batch (norms, dot products) as it is produced.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from auditor.models.train import to_float


def _loss_fn(model: nn.Module, buffers: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    return loss


def iter_per_sample_grads(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 64
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (row slice, flat per-sample gradients [B, P], per-sample losses [B]) in row order.

    The model is put in eval mode, so BatchNorm uses its running statistics and one sample's gradient
    does not depend on the other samples of the batch (the TracIn / influence-function assumption).
    """
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    loss = _loss_fn(model, buffers)
    grad_and_loss = vmap(grad(loss, has_aux=False), in_dims=(None, 0, 0))
    loss_only = vmap(loss, in_dims=(None, 0, 0))
    for start in range(0, len(targets), batch_size):
        rows = slice(start, min(start + batch_size, len(targets)))
        x = to_float(pixels[rows])
        y = targets[rows]
        grads = grad_and_loss(params, x, y)
        with torch.no_grad():
            losses = loss_only(params, x, y)
        flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
        yield rows, flat, losses


def mean_gradient(model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Gradient (flat [P]) of the mean eval-mode loss over all rows, accumulated batch by batch."""
    if len(targets) == 0:
        raise ValueError("mean_gradient needs at least one sample")
    model.eval()
    params = [p for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(targets), batch_size):
        x = to_float(pixels[start : start + batch_size])
        loss = nn.functional.cross_entropy(model(x), targets[start : start + batch_size], reduction="sum")
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
    return torch.cat([g.reshape(-1) for g in total]) / len(targets)
