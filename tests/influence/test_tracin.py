"""Per-sample gradients and TracIn checked against plain autograd, one sample at a time (exact oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auditor.influence.gradients import GradientMethod, iter_per_sample_grads, mean_gradient
from auditor.influence.tracin import _squared_norms_and_dots, compute_tracin
from auditor.models.architectures import Conv4
from auditor.models.train import Checkpoint, to_float


def _model_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = Conv4(1, 3, image_size=8, width=8).double()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.randn(32, 1, 8, 8, dtype=torch.float64))
    model = model.float()
    pixels = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    return model, pixels, targets


def _single_grad(model: nn.Module, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.eval()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(to_float(pixels[None])), target[None])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_per_sample_grads_match_autograd_with_batchnorm(method: GradientMethod) -> None:
    model, pixels, targets = _model_and_data()
    rows_seen = 0
    for rows, flat, _ in iter_per_sample_grads(model, pixels, targets, batch_size=4, method=method):
        for offset, i in enumerate(range(rows.start, rows.stop)):
            expected = _single_grad(model, pixels[i], targets[i])
            torch.testing.assert_close(flat[offset], expected, rtol=1e-4, atol=1e-6)
            rows_seen += 1
    assert rows_seen == len(targets)


def test_mean_gradient_is_mean_of_per_sample_grads() -> None:
    model, pixels, targets = _model_and_data(1)
    per_sample = torch.stack([_single_grad(model, pixels[i], targets[i]) for i in range(len(targets))])
    torch.testing.assert_close(
        mean_gradient(model, pixels, targets, batch_size=3), per_sample.mean(0), rtol=1e-4, atol=1e-6
    )


def test_tracin_self_influence_and_harm_match_definition() -> None:
    model, pixels, targets = _model_and_data(2)
    second = {k: v.clone() for k, v in model.state_dict().items()}
    for name, value in second.items():
        if value.is_floating_point() and "running" not in name:
            value.add_(0.05 * torch.randn_like(value))
    checkpoints = [
        Checkpoint(epoch=1, learning_rate=0.1, state={k: v.clone() for k, v in model.state_dict().items()}),
        Checkpoint(epoch=2, learning_rate=0.02, state=second),
    ]
    train_pixels, train_targets = pixels[:7], targets[:7]
    target_pixels, target_targets = pixels[7:], targets[7:]
    scores = compute_tracin(
        model,
        checkpoints,
        train_pixels,
        train_targets,
        target_pixels=target_pixels,
        target_targets=target_targets,
        batch_size=3,
        progress=False,
    )
    expected_self = torch.zeros(7, dtype=torch.float64)
    expected_harm = torch.zeros(7, dtype=torch.float64)
    for checkpoint in checkpoints:
        model.load_state_dict(checkpoint.state)
        target_grad = torch.stack([_single_grad(model, target_pixels[j], target_targets[j]) for j in range(3)]).mean(0)
        for i in range(7):
            g = _single_grad(model, train_pixels[i], train_targets[i]).double()
            expected_self[i] += checkpoint.learning_rate * g.pow(2).sum()
            expected_harm[i] -= checkpoint.learning_rate * g @ target_grad.double()
    torch.testing.assert_close(torch.from_numpy(scores.self_influence), expected_self, rtol=1e-4, atol=1e-8)
    assert scores.harm is not None
    torch.testing.assert_close(torch.from_numpy(scores.harm), expected_harm, rtol=1e-3, atol=1e-7)
    assert scores.losses.shape == (2, 7)


def test_blockwise_float64_reductions_equal_whole_matrix_ones() -> None:
    generator = torch.Generator().manual_seed(3)
    flat = torch.randn(5, 1003, generator=generator) * torch.logspace(-4, 1, 1003)
    direction = torch.randn(1003, generator=generator, dtype=torch.float64)
    squared_norms, dots = _squared_norms_and_dots(flat, direction, block_bytes=8 * 5 * 97)  # 97 columns a block
    torch.testing.assert_close(squared_norms, flat.double().pow(2).sum(1), rtol=1e-13, atol=0)
    assert dots is not None
    torch.testing.assert_close(dots, flat.double() @ direction, rtol=1e-13, atol=1e-15)
    assert _squared_norms_and_dots(flat, None)[1] is None


def test_extra_targets_match_single_target_runs() -> None:
    model, pixels, targets = _model_and_data(3)
    checkpoints = [Checkpoint(epoch=1, learning_rate=0.1, state={k: v.clone() for k, v in model.state_dict().items()})]
    train_pixels, train_targets = pixels[:6], targets[:6]
    first, second = (pixels[6:8], targets[6:8]), (pixels[8:], targets[8:])
    combined = compute_tracin(
        model, checkpoints, train_pixels, train_targets,
        target_pixels=first[0], target_targets=first[1],
        extra_targets={"a": first, "b": second}, batch_size=4, progress=False,
    )  # fmt: skip
    alone = compute_tracin(
        model,
        checkpoints,
        train_pixels,
        train_targets,
        target_pixels=second[0],
        target_targets=second[1],
        progress=False,
    )
    assert combined.harm is not None
    assert alone.harm is not None
    np.testing.assert_allclose(combined.target_harm["a"], combined.harm, rtol=1e-9)
    np.testing.assert_allclose(combined.target_harm["b"], alone.harm, rtol=1e-6, atol=1e-12)
    assert set(combined.target_harm) == {"a", "b"}
