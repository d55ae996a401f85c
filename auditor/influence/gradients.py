"""Per-sample loss gradients (eval mode, BatchNorm on running statistics) and the mean gradient of a set.

Two exact paths: layer hooks (one batched backward to each layer's output, then per-sample outer
products) for Conv2d/Linear/BatchNorm models, and `torch.func` vmap over grad for any other model.
Gradients are never stored whole: callers reduce each batch (norms, dot products) as it is produced.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.func import functional_call, grad, vmap

from auditor.models.train import to_float

logger = logging.getLogger(__name__)

GradientMethod = Literal["auto", "hooks", "vmap"]

HOOK_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
"""Exact types (not subclasses, which may change `forward`) whose per-sample gradients the hook path computes."""

_BatchNorm = nn.modules.batchnorm._BatchNorm
_IM2COL_CHUNK_BYTES = 2 << 20
_GROUPED_CONV_MIN_POSITIONS = 196


class HookPathError(RuntimeError):
    """The hook path cannot compute this batch exactly (a parameter used outside its layer, an input changed)."""


def find_hook_path_blocker(model: nn.Module) -> str | None:
    """Why the hook path cannot compute `model`'s per-sample gradients in eval mode, or None when it can.

    It can when every module that owns parameters is exactly one of HOOK_LAYER_TYPES (Conv2d with
    groups=1 and zero padding), owns just `weight` (and `bias`), and every BatchNorm keeps running
    statistics, so that in eval mode no layer mixes the samples of a batch. Parameter-free modules are
    assumed to treat samples independently too (the TracIn assumption the vmap path also makes).
    """
    for name, module in model.named_modules():
        label = name or type(module).__name__
        if isinstance(module, _BatchNorm) and (module.running_mean is None or module.running_var is None):
            return f"{label}: BatchNorm without running statistics mixes the samples of a batch"
        owned = {param_name for param_name, _ in module.named_parameters(recurse=False)}
        if not owned:
            continue
        if type(module) not in HOOK_LAYER_TYPES:
            return f"{label}: {type(module).__name__} has parameters and no per-sample hook rule"
        if not owned <= {"weight", "bias"} or "weight" not in owned:
            return f"{label}: parameters {sorted(owned)} are not plain weight/bias (parametrised or renamed)"
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                return f"{label}: grouped convolution (groups={module.groups})"
            if module.padding_mode != "zeros":
                return f"{label}: padding_mode={module.padding_mode!r}"
    return None


@dataclass
class _LayerCall:
    """One forward call of a hooked layer: its input (and that input's version) and its output's gradient edge."""

    module: nn.Module
    inputs: torch.Tensor | None
    input_version: int
    output_edge: GradientEdge | None


class _HookGradients:
    """Per-sample gradients of a fixed model from forward hooks on its Conv2d/Linear/BatchNorm layers."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.n_params = sum(self.numels)
        self.offsets = [sum(self.numels[:i]) for i in range(len(named))]
        index_of = {id(p): i for i, (_, p) in enumerate(named)}
        # Tied parameters appear once in named_parameters(); every layer that uses one maps to that index.
        self.layers: list[nn.Module] = [
            m for m in model.modules() if type(m) in HOOK_LAYER_TYPES and isinstance(m.weight, nn.Parameter)
        ]
        self.weight_index = {m: index_of[id(m.weight)] for m in self.layers}
        self.bias_index = {m: index_of[id(m.bias)] for m in self.layers if isinstance(m.bias, nn.Parameter)}
        self.leaves = {name: p.detach().requires_grad_(True) for name, p in named}
        self.leaf_index = {id(leaf): i for i, leaf in enumerate(self.leaves.values())}

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat per-sample gradients [B, P] (named_parameters order) and per-sample losses [B] of one batch."""
        calls: list[_LayerCall] = []

        def capture(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs = args[0] if args else None  # None: called by keyword, refused by _check_calls
            # The edge is taken now: a later in-place op (ReLU(inplace=True)) would otherwise redirect it.
            edge = get_gradient_edge(output) if output.requires_grad else None
            calls.append(_LayerCall(module, inputs, -1 if inputs is None else inputs._version, edge))

        handles = [layer.register_forward_hook(capture) for layer in self.layers]
        try:
            with torch.enable_grad():
                logits = functional_call(self.model, self.leaves, (x,))
                losses = nn.functional.cross_entropy(logits, y, reduction="none")
        finally:
            for handle in handles:
                handle.remove()
        edges, inputs = self._check_calls(calls, losses)
        output_grads = torch.autograd.grad(losses.sum(), edges, allow_unused=True)
        flat = torch.empty(len(y), self.n_params, dtype=logits.dtype, device=logits.device)
        written = [False] * len(self.numels)
        for call, x_in, output_grad in zip(calls, inputs, output_grads, strict=True):
            if output_grad is None:  # the layer's output does not reach the loss: zero gradient
                continue
            index = self.weight_index[call.module]
            block = self._param_block(flat, index)
            if written[index]:  # a tied weight: this call's share is added to the earlier ones'
                block.add_(_write_weight_grads(call.module, x_in, output_grad, torch.empty_like(block)))
            else:
                _write_weight_grads(call.module, x_in, output_grad, block)
            written[index] = True
            if call.module in self.bias_index:
                index = self.bias_index[call.module]
                bias = _bias_grads(call.module, output_grad)
                if written[index]:
                    self._param_block(flat, index).add_(bias)
                else:
                    self._param_block(flat, index).copy_(bias)
                written[index] = True
        for index, done in enumerate(written):
            if not done:
                self._param_block(flat, index).zero_()
        return flat, losses.detach()

    def _param_block(self, flat: torch.Tensor, index: int) -> torch.Tensor:
        """The columns of parameter `index` in `flat`, viewed as [B, *parameter shape]."""
        block = flat[:, self.offsets[index] : self.offsets[index] + self.numels[index]]
        return block.view(len(flat), *self.shapes[index])

    def _check_calls(
        self, calls: list[_LayerCall], losses: torch.Tensor
    ) -> tuple[list[GradientEdge], list[torch.Tensor]]:
        """The calls' output edges and detached inputs, once every parameter use in the graph is a hooked call.

        Raises HookPathError when a parameter is also used outside its layer (functionally, or by a layer
        called by keyword), or a layer's input was changed in place or does not have the batch first.
        """
        edges: list[GradientEdge] = []
        inputs: list[torch.Tensor] = []
        for call in calls:
            name = type(call.module).__name__
            if call.inputs is None or call.output_edge is None:
                raise HookPathError(f"{name} called by keyword or with gradients disabled")
            if call.inputs._version != call.input_version:
                raise HookPathError(f"the input of {name} was modified in place after the layer")
            unbatched = call.inputs.dim() != 4 if isinstance(call.module, nn.Conv2d) else call.inputs.dim() < 2
            if unbatched or call.inputs.shape[0] != len(losses):
                raise HookPathError(f"{name} called on an input whose first axis is not the batch")
            edges.append(call.output_edge)
            inputs.append(call.inputs.detach())
        hooked = Counter(self.weight_index[c.module] for c in calls)
        hooked.update(self.bias_index[c.module] for c in calls if c.module in self.bias_index)
        in_graph = _count_leaf_uses(losses.grad_fn, self.leaf_index)
        if in_graph != hooked:
            unmatched = sorted({self.names[i] for i in (in_graph - hooked) + (hooked - in_graph)})
            raise HookPathError(f"parameters used outside their layer's forward: {unmatched}")
        return edges, inputs


def _count_leaf_uses(root: Node | None, leaf_index: dict[int, int]) -> Counter[int]:
    """How many graph edges lead into each parameter leaf (by its index): one per use in the forward pass."""
    uses: Counter[int] = Counter()
    seen: set[Node] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                if id(variable) in leaf_index:
                    uses[leaf_index[id(variable)]] += 1
            elif child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


def _write_weight_grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write one layer call's per-sample weight gradients into `out` [B, *weight shape] and return it.

    `x` is the layer's input and `g` the loss gradient with respect to its output.
    """
    if isinstance(module, nn.Conv2d):
        _write_conv_weight_grads(module, x, g, out.view(len(out), out.shape[1], -1))
    elif isinstance(module, nn.Linear):
        if x.dim() == 2:
            torch.mul(g.unsqueeze(2), x.unsqueeze(1), out=out)
        else:
            x3, g3 = x.reshape(len(x), -1, x.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
            torch.bmm(g3.transpose(1, 2), x3, out=out)
    elif isinstance(module, _BatchNorm):
        assert module.running_mean is not None
        assert module.running_var is not None
        # sum over positions of g * (x - mean), then one scaling by 1/std: no x_hat tensor is built.
        g_times_centred = (x - module.running_mean.view((1, -1) + (1,) * (x.dim() - 2))).mul_(g)
        if x.dim() > 2:
            torch.sum(g_times_centred.flatten(2), dim=2, out=out)
        else:
            out.copy_(g_times_centred)
        out.mul_(torch.rsqrt(module.running_var + module.eps))
    else:
        raise HookPathError(f"no per-sample rule for {type(module).__name__}")
    return out


def _bias_grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Per-sample bias gradients [B, O]: the output gradient summed over every axis but batch and channel."""
    if isinstance(module, nn.Linear):
        return g if g.dim() == 2 else g.reshape(len(g), -1, g.shape[-1]).sum(1)
    return g if g.dim() == 2 else g.flatten(2).sum(2)


def _write_conv_weight_grads(module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
    """out[b] = g[b] (as [O, positions]) @ patches(x[b]).T for every sample b; `out` is [B, O, C*kh*kw].

    Large feature maps (at least _GROUPED_CONV_MIN_POSITIONS output positions, kernel larger than 1x1)
    go to oneDNN as one grouped-convolution weight gradient with a group per sample; the rest are
    batched matrix products over input patches (im2col) materialised for as many samples as fit in
    about 2 MiB, so each chunk is multiplied while still in cache. On Conv-4 and SmallResNet layers
    (CPU, one thread) each is the faster of the two on its side of the threshold, and both beat one
    F.unfold of the whole batch by up to 3x on large maps.
    """
    n_positions = g.shape[2] * g.shape[3]
    if n_positions >= _GROUPED_CONV_MIN_POSITIONS and module.kernel_size != (1, 1):
        out.copy_(_grouped_conv_weight_grads(module, x, g).view(out.shape))
        return
    patches = _patch_view(module, x, g.shape[2], g.shape[3])
    g_flat = g.flatten(2)
    n_rows = out.shape[2]
    chunk = max(1, _IM2COL_CHUNK_BYTES // (n_rows * n_positions * x.element_size()))
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        cols = patches[rows].reshape(-1, n_rows, n_positions)
        torch.bmm(g_flat[rows], cols.transpose(1, 2), out=out[rows])


def _grouped_conv_weight_grads(module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients [B*O, C, kh, kw]: the batch folded into channels, one group per sample."""
    pads = _explicit_padding(module)
    if any(pads):
        x = nn.functional.pad(x, pads)
    batch, channels = x.shape[:2]
    n_out = g.shape[1]
    weight_like = x.new_empty(1, 1, 1, 1).expand(batch * n_out, channels, *module.kernel_size)
    _, per_sample, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, batch * n_out, *g.shape[2:]),
        x.reshape(1, batch * channels, *x.shape[2:]),
        weight_like,
        None,
        list(module.stride),
        [0, 0],
        list(module.dilation),
        False,
        [0, 0],
        batch,
        [False, True, False],
    )
    result: torch.Tensor = per_sample
    return result


def _patch_view(module: nn.Conv2d, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The conv's input patches as a strided view [B, C, kh, kw, out_h, out_w] of the padded input (no copy)."""
    pads = _explicit_padding(module)
    if any(pads):
        x = nn.functional.pad(x, pads)
    batch, channels = x.shape[:2]
    stride_b, stride_c, stride_h, stride_w = x.stride()
    (dilation_h, dilation_w), (step_h, step_w) = module.dilation, module.stride
    return x.as_strided(
        (batch, channels, *module.kernel_size, out_h, out_w),
        (stride_b, stride_c, stride_h * dilation_h, stride_w * dilation_w, stride_h * step_h, stride_w * step_w),
        x.storage_offset(),
    )


def _explicit_padding(module: nn.Conv2d) -> list[int]:
    """F.pad amounts (left, right, top, bottom) equal to the conv's padding, 'same' and 'valid' included."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [0, 0, 0, 0]
        pads: list[int] = []  # "same", as F.conv2d: any odd extra pixel goes right / bottom
        for dilation, kernel in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return pads
    pad_h, pad_w = module.padding
    return [pad_w, pad_w, pad_h, pad_h]


def _loss_fn(model: nn.Module, buffers: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    return loss


def _vmap_batch_fn(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample (flat gradients, losses) of one batch by vmap over grad of a one-sample loss."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    loss = _loss_fn(model, buffers)
    grad_all = vmap(grad(loss), in_dims=(None, 0, 0))
    loss_only = vmap(loss, in_dims=(None, 0, 0))

    def batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads = grad_all(params, x, y)
        with torch.no_grad():
            losses = loss_only(params, x, y)
        return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1), losses

    return batch


def iter_per_sample_grads(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int = 64,
    method: GradientMethod = "auto",
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (row slice, flat per-sample gradients [B, P], per-sample losses [B]) in row order.

    The model is put in eval mode, so BatchNorm uses its running statistics and one sample's gradient
    does not depend on the other samples of the batch (the TracIn / influence-function assumption).
    Columns follow `model.named_parameters()`. `method="auto"` takes the hook path when
    `find_hook_path_blocker(model)` is None (2-3x faster on CPU) and vmap otherwise, and also drops to
    vmap for the rest of the rows if a batch fails the hook path's graph checks; "hooks" raises instead.
    """
    if method not in ("auto", "hooks", "vmap"):
        raise ValueError(f"method must be 'auto', 'hooks' or 'vmap'; got {method!r}")
    model.eval()
    blocker = find_hook_path_blocker(model) if method != "vmap" else "vmap requested"
    if method == "hooks" and blocker is not None:
        raise ValueError(f"the hook path cannot compute per-sample gradients of this model: {blocker}")
    hooks = _HookGradients(model) if blocker is None else None
    vmap_batch = _vmap_batch_fn(model)
    if method == "auto" and blocker is not None:
        logger.debug("Per-sample gradients by vmap: %s", blocker)
    for start in range(0, len(targets), batch_size):
        rows = slice(start, min(start + batch_size, len(targets)))
        x = to_float(pixels[rows])
        y = targets[rows]
        if hooks is not None:
            try:
                flat, losses = hooks.batch(x, y)
            except HookPathError as error:
                if method == "hooks":
                    raise
                logger.warning("Per-sample gradients fall back to vmap (slower): %s", error)
                hooks = None
        if hooks is None:
            flat, losses = vmap_batch(x, y)
        yield rows, flat, losses


def mean_gradient(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """Gradient (flat [P]) of the mean eval-mode loss over all rows, accumulated batch by batch."""
    if len(targets) == 0:
        raise ValueError("mean_gradient needs at least one sample")
    model.eval()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(targets), batch_size):
        x = to_float(pixels[start : start + batch_size])
        loss = nn.functional.cross_entropy(model(x), targets[start : start + batch_size], reduction="sum")
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
    return torch.cat([g.reshape(-1) for g in total]) / len(targets)
