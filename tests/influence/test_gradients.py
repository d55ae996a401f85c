"""Both per-sample gradient paths (layer hooks, vmap) checked against plain autograd, one sample at a time."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from auditor.influence import gradients
from auditor.influence.gradients import GradientMethod, HookPathError, find_hook_path_blocker, iter_per_sample_grads
from auditor.models.architectures import Conv4, SmallResNet
from auditor.models.train import to_float


class _StridedConvNet(nn.Module):
    """Convs with bias, stride 2, rectangular kernels, dilation, 'valid' and asymmetric 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=True)
        self.conv2 = nn.Conv2d(4, 5, (3, 2), stride=(1, 2), dilation=(1, 2), padding=(2, 1), bias=True)
        self.conv3 = nn.Conv2d(5, 3, 4, padding="same", bias=True)  # even kernel: one extra pixel right/bottom
        self.conv4 = nn.Conv2d(3, 4, 2, padding="valid", bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.tanh(self.conv3(x))
        x = self.bn(self.conv4(x)).relu_()
        out: torch.Tensor = self.head(x.mean((2, 3)))
        return out


class _RowLinearNet(nn.Module):
    """A Linear applied to every image row (3-d input), then BatchNorm1d and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(8, 5)
        self.bn = nn.BatchNorm1d(40)
        self.head = nn.Linear(40, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.bn(torch.relu(self.rows(x[:, 0])).flatten(1)))
        return out


class _TiedNet(nn.Module):
    """One weight shared by two Linear layers, a layer called twice, and a layer never called."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 64)
        self.decode = nn.Linear(64, 64, bias=False)
        self.decode.weight = self.encode.weight
        self.head = nn.Linear(64, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.encode(x.flatten(1)))
        h = torch.tanh(self.decode(h)) + torch.tanh(self.encode(h))
        out: torch.Tensor = self.head(h)
        return out


class _FunctionalUseNet(nn.Module):
    """Uses a Linear's weight outside the Linear's forward, which forward hooks cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(x.flatten(1)))
        out: torch.Tensor = self.head(h) + nn.functional.linear(h, self.head.weight)
        return out


_ALL_METHODS: tuple[GradientMethod, ...] = ("auto", "hooks", "vmap")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def _with_random_state(model: nn.Module, seed: int) -> nn.Module:
    """Random weights plus non-trivial BatchNorm affine parameters and running statistics."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if module.running_mean is not None and module.running_var is not None:
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.3, 0.3)
    return model


def _data(seed: int, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return pixels, torch.arange(n) % 3


def _autograd_grad_and_loss(
    model: nn.Module, pixel_row: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, float]:
    model.eval()
    loss = nn.functional.cross_entropy(model(to_float(pixel_row[None])), target[None])
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    flat = [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads, strict=True)]
    return torch.cat([g.reshape(-1) for g in flat]), loss.item()


def _assert_matches_autograd(model: nn.Module, method: GradientMethod, *, seed: int = 0, batch_size: int = 4) -> None:
    pixels, targets = _data(seed)
    n_params = sum(p.numel() for p in model.parameters())
    rows_seen = 0
    for rows, flat, losses in iter_per_sample_grads(model, pixels, targets, batch_size=batch_size, method=method):
        assert flat.shape == (rows.stop - rows.start, n_params)
        for offset, i in enumerate(range(rows.start, rows.stop)):
            expected, expected_loss = _autograd_grad_and_loss(model, pixels[i], targets[i])
            torch.testing.assert_close(flat[offset], expected, rtol=1e-4, atol=1e-6)
            assert losses[offset].item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
            rows_seen += 1
    assert rows_seen == len(targets)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_strided_conv_with_bias_matches_autograd(method: GradientMethod) -> None:
    _assert_matches_autograd(_with_random_state(_StridedConvNet(), 1), method, seed=1)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("route", ["grouped_conv", "im2col_bmm"])
def test_both_conv_weight_routes_match_autograd(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threshold = 1 if route == "grouped_conv" else 10**9  # output positions from which a conv goes to oneDNN
    monkeypatch.setattr(gradients, "_GROUPED_CONV_MIN_POSITIONS", threshold)
    _assert_matches_autograd(_with_random_state(_StridedConvNet(), 10), "hooks", seed=10)
    resnet = _with_random_state(SmallResNet(1, 3, image_size=8, widths=(4, 8, 8)), 11)
    _assert_matches_autograd(resnet, "hooks", seed=11)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_linear_only_mlp_matches_autograd(method: GradientMethod) -> None:
    _assert_matches_autograd(_with_random_state(_mlp(), 2), method, seed=2, batch_size=3)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_small_resnet_matches_autograd(method: GradientMethod) -> None:
    model = _with_random_state(SmallResNet(1, 3, image_size=8, widths=(4, 8, 8)), 3)
    _assert_matches_autograd(model, method, seed=3)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_linear_on_rows_and_batchnorm1d_match_autograd(method: GradientMethod) -> None:
    _assert_matches_autograd(_with_random_state(_RowLinearNet(), 4), method, seed=4)


def test_hook_path_adds_tied_and_repeated_uses_and_zeroes_unused_layers() -> None:
    model = _with_random_state(_TiedNet(), 5)
    assert find_hook_path_blocker(model) is None
    _assert_matches_autograd(model, "hooks", seed=5)
    pixels, targets = _data(5)
    _, flat, _ = next(iter_per_sample_grads(model, pixels, targets, batch_size=4, method="hooks"))
    assert torch.count_nonzero(flat[:, -(3 * 3 + 3) :]) == 0  # `unused` is last in named_parameters()


def test_auto_and_hooks_agree_with_vmap_on_conv4() -> None:
    model = _with_random_state(Conv4(1, 3, image_size=8, width=8), 6)
    pixels, targets = _data(6, n=9)
    runs = {
        method: list(iter_per_sample_grads(model, pixels, targets, batch_size=4, method=method))
        for method in _ALL_METHODS
    }
    for auto, hooks, vmapped in zip(runs["auto"], runs["hooks"], runs["vmap"], strict=True):
        assert auto[0] == hooks[0] == vmapped[0]
        torch.testing.assert_close(auto[1], hooks[1], rtol=0, atol=0)
        torch.testing.assert_close(hooks[1], vmapped[1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(hooks[2], vmapped[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (nn.LayerNorm([1, 8, 8]), "LayerNorm"),
        (nn.GroupNorm(1, 1), "GroupNorm"),
        (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.BatchNorm2d(1, track_running_stats=False), "running statistics"),
        (nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 1, 3, padding=1)), "ParametrizedConv2d"),
    ],
)
def test_unsupported_layers_fall_back_to_vmap_and_stay_exact(layer: nn.Module, reason: str) -> None:
    model = _with_random_state(nn.Sequential(layer, nn.Flatten(), nn.Linear(64, 3)), 7)
    blocker = find_hook_path_blocker(model)
    assert blocker is not None
    assert reason in blocker
    with pytest.raises(ValueError, match="hook path cannot"):
        next(iter_per_sample_grads(model, *_data(7), method="hooks"))
    _assert_matches_autograd(model, "auto", seed=7)


def test_embedding_model_falls_back_to_vmap() -> None:
    class TokenNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 4)
            self.head = nn.Linear(4 * 64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = ((x + 1.0) * 127.5).round().long().flatten(1)  # back to the raw pixel values
            out: torch.Tensor = self.head(self.embed(tokens).flatten(1))
            return out

    model = _with_random_state(TokenNet(), 8)
    assert "Embedding" in (find_hook_path_blocker(model) or "")
    _assert_matches_autograd(model, "auto", seed=8)


def test_grouped_conv_is_not_hooked() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten())
    assert "groups=2" in (find_hook_path_blocker(model) or "")


def test_parameter_used_outside_its_layer_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _with_random_state(_FunctionalUseNet(), 9)
    assert find_hook_path_blocker(model) is None  # only the graph check can see the functional use
    with pytest.raises(HookPathError, match=r"head\.weight"):
        next(iter_per_sample_grads(model, *_data(9), method="hooks"))
    with caplog.at_level(logging.WARNING, logger="auditor.influence.gradients"):
        _assert_matches_autograd(model, "auto", seed=9)
    assert any("fall back to vmap" in record.getMessage() for record in caplog.records)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method must be"):
        next(iter_per_sample_grads(_mlp(), *_data(0), method="fast"))  # type: ignore[arg-type]
