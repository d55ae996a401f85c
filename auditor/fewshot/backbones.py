"""Functional backbones for meta-learning: a network evaluated at a FLAT parameter vector, so MAML's inner loop,
task gradients and Hessian-vector products are plain autograd on one tensor.

`MLPBackbone` (linear when hidden=()) serves tiny exact tests; `Conv4Backbone` reuses
`auditor.models.architectures.Conv4` through `torch.func.functional_call`. Cost: one forward of the module per call;
unflattening is views only. BatchNorm is transductive (batch statistics, no running buffers), as in MAML.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from auditor.models.architectures import Conv4


class FunctionalBackbone:
    """Wraps an `nn.Module`; `backbone(params, x)` runs it with its parameters taken from the flat `params`."""

    def __init__(self, module: nn.Module, body: nn.Module | None = None) -> None:
        self.module = module
        # The part that embeds (the module without a per-way linear head, if it has one).
        self.body = module if body is None else body
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]
        self.n_params = sum(self.sizes)

    def init_params(self, seed: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The module's default initialisation under `seed`, flattened (the global torch RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.module.modules():
                reset = getattr(layer, "reset_parameters", None)
                if callable(reset):
                    reset()
            flat = torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])
        return flat.to(dtype)

    def head_mask(self) -> torch.Tensor:
        """Boolean mask over the flat parameters: True for those of the head (the module outside its body)."""
        in_body = {id(p) for p in self.body.parameters()}
        parts = [torch.full((p.numel(),), id(p) not in in_body) for p in self.module.parameters()]
        return torch.cat(parts)

    def unflatten(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view of `params` with that parameter's shape."""
        chunks = torch.split(params, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def __call__(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(self.module, self.unflatten(params), (x,))
        return out

    def embed(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The body's output (the embedding) at `params`, which are the whole module's flat parameters."""
        if self.body is self.module:
            return self(params, x)
        full = self.unflatten(params)
        name_of = {id(p): name for name, p in self.module.named_parameters()}
        mine = {name: full[name_of[id(p)]] for name, p in self.body.named_parameters()}
        out: torch.Tensor = functional_call(self.body, mine, (x,))
        return out


class MLPBackbone(FunctionalBackbone):
    """Flatten, then Linear(-ReLU) layers of widths `hidden`, then Linear to `out_features` (linear if hidden=()).

    `relu=False` keeps a deep LINEAR network: still smooth everywhere, and with MAML a hidden layer gives the
    meta-learner a feature metric to learn (a plain linear head has almost nothing transferable to learn when
    every task permutes its labels).
    """

    def __init__(self, in_features: int, out_features: int, *, hidden: Sequence[int] = (), relu: bool = True) -> None:
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if relu and i < len(widths) - 2:
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
        # As a MAML network its body is all but the last Linear (the per-way head); ProtoNet embeds with all of it.
        super().__init__(net, net[:-1])


class _BatchStatNorm2d(nn.Module):
    """BatchNorm2d from primitive ops, batch statistics only: differentiable to any order (torch's fused batch_norm
    stops at second order, and the Hessian of second-order MAML needs third). Same parameter names as BatchNorm2d."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
        normed = (x - mean) / torch.sqrt(var + self.eps)
        return normed * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class Conv4Backbone(FunctionalBackbone):
    """The project's Conv-4. `out_features=None` gives the embedding network (ProtoNet: conv blocks, global average
    pool); an integer keeps Conv-4's linear head with that many outputs (MAML: one per way). BatchNorm layers are
    swapped for `_BatchStatNorm2d` (transductive batch statistics, as in MAML; no running buffers)."""

    def __init__(self, in_channels: int, *, image_size: int, out_features: int | None, width: int = 64) -> None:
        net = Conv4(in_channels, out_features or 1, image_size=image_size, width=width)
        for block in net.features:
            if isinstance(block, nn.Sequential):
                for i, layer in enumerate(block):
                    if isinstance(layer, nn.BatchNorm2d):
                        block[i] = _BatchStatNorm2d(layer.num_features, eps=layer.eps)
                    elif isinstance(layer, nn.ReLU):
                        layer.inplace = False  # autograd-of-autograd must not see in-place ops
        super().__init__(net.features if out_features is None else net, net.features)
