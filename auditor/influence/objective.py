"""The empirical risk whose Hessian influence functions invert: a model, a parameter subset, a loss, the training rows.

Owns per-sample gradients of the subset (blocked, never N x P at once), mean gradients of a target set and
Hessian-vector products of the mean training loss. Pure compute, no I/O. Cost: a per-sample gradient
batch is one vmapped backward pass; an HVP with K columns is K forward-over-reverse passes over the
training rows (double backward, batched over the columns). Assumes the model is evaluated in eval mode (BatchNorm on
running statistics), so that the loss is a sum of independent per-sample terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from auditor.influence.gradients import iter_per_sample_grads
from auditor.models.train import to_float

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(model outputs [B, ...], targets [B]) -> per-sample losses [B]."""

_HVP_COLUMNS = 64


def cross_entropy_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample softmax cross-entropy: the loss the proxy models are trained with."""
    return nn.functional.cross_entropy(logits, targets, reduction="none")


class Objective:
    """Mean of `loss_fn` over the training rows `inputs`/`targets`, as a function of the parameters `params`.

    `params` names a subset of `model.named_parameters()` (e.g. `("head.weight", "head.bias")`); the
    others are held fixed. None means all parameters. Flat vectors follow the order of `params`.
    `prepare` maps a stored input batch to the model's input (e.g. `to_float` for uint8 pixels); None
    passes inputs unchanged (features, float64 test data). The Hessian is undamped: solvers add damping.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        params: Sequence[str] | None = None,
        loss_fn: LossFn = cross_entropy_losses,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 256,
    ) -> None:
        if len(inputs) != len(targets) or len(targets) == 0:
            raise ValueError(f"need as many inputs as targets, at least one; got {len(inputs)} and {len(targets)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        named = dict(model.named_parameters())
        names = tuple(named) if params is None else tuple(params)
        unknown = [name for name in names if name not in named]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"params must be distinct names of model parameters; unknown {unknown}, got {names}")
        self.model = model
        self.inputs = inputs
        self.targets = targets
        self.param_names = names
        self.loss_fn = loss_fn
        self.prepare = prepare
        self.batch_size = batch_size
        self.shapes = [named[name].shape for name in names]
        self.numels = [named[name].numel() for name in names]
        self.n_params = sum(self.numels)
        self.dtype = named[names[0]].dtype
        self.device = named[names[0]].device
        # Fixed parameters and buffers enter every functional call detached: no graph is built for them.
        self._fixed = {name: p.detach() for name, p in named.items() if name not in names}
        self._fixed.update({name: b.detach() for name, b in model.named_buffers()})
        self._uses_gradients_module = params is None and prepare is to_float and loss_fn is cross_entropy_losses

    @property
    def n_samples(self) -> int:
        """Number of training rows."""
        return len(self.targets)

    def flat_params(self) -> torch.Tensor:
        """The current values of the parameter subset as one flat vector [P]."""
        named = dict(self.model.named_parameters())
        return torch.cat([named[name].detach().reshape(-1) for name in self.param_names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector [P] into {parameter name: tensor of the parameter's shape}."""
        pieces = torch.split(flat, self.numels)
        return {
            name: piece.view(shape) for name, piece, shape in zip(self.param_names, pieces, self.shapes, strict=True)
        }

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.prepare is None else self.prepare(x)

    def _loss_sum(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(self.model, {**self._fixed, **self.unflatten(flat)}, (x,))
        return self.loss_fn(outputs, y).sum()

    def iter_grads(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int | None = None
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yield (row slice, per-sample gradients [B, P], per-sample losses [B]) of any rows, in row order.

        The whole-model cross-entropy objective on uint8 pixels takes `gradients.iter_per_sample_grads`
        (its layer-hook path is 2-3x faster); any other objective is vmap over grad of a one-sample loss.
        """
        size = batch_size or self.batch_size
        if self._uses_gradients_module:
            yield from iter_per_sample_grads(self.model, inputs, targets, batch_size=size)
            return
        self.model.eval()
        flat = self.flat_params()

        def one_loss(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self._loss_sum(p, x.unsqueeze(0), y.unsqueeze(0))

        per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))
        for start in range(0, len(targets), size):
            rows = slice(start, min(start + size, len(targets)))
            x, y = self._inputs(inputs[rows]), targets[rows]
            grads = per_sample(flat, x, y)
            with torch.no_grad():
                outputs = functional_call(self.model, {**self._fixed, **self.unflatten(flat)}, (x,))
                losses = self.loss_fn(outputs, y)
            yield rows, grads, losses

    def mean_gradient(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Gradient [P] of the mean loss over the given rows (a target set), batch by batch."""
        if len(targets) == 0:
            raise ValueError("mean_gradient needs at least one row")
        self.model.eval()
        flat = self.flat_params().requires_grad_(True)
        total = torch.zeros_like(flat)
        for start in range(0, len(targets), self.batch_size):
            rows = slice(start, start + self.batch_size)
            loss = self._loss_sum(flat, self._inputs(inputs[rows]), targets[rows])
            total += torch.autograd.grad(loss, flat)[0]
        return total / len(targets)

    def hvp(self, vectors: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """H @ vectors for vectors [P, K] (or [P]): H the Hessian of the mean loss over the training rows.

        `rows` (indices) restricts the mean to those rows: the stochastic Hessian of LiSSA. Double
        backward, batched over columns: on small models about 50x less overhead per call than
        torch.func's jvp-of-grad, which matters for LiSSA's thousands of small calls.
        """
        single = vectors.dim() == 1
        columns = vectors.unsqueeze(1) if single else vectors
        self.model.eval()
        flat = self.flat_params().requires_grad_(True)
        inputs = self.inputs if rows is None else self.inputs[rows]
        targets = self.targets if rows is None else self.targets[rows]
        result = torch.zeros_like(columns)
        for start in range(0, len(targets), self.batch_size):
            x = self._inputs(inputs[start : start + self.batch_size])
            loss = self._loss_sum(flat, x, targets[start : start + self.batch_size])
            (gradient,) = torch.autograd.grad(loss, flat, create_graph=True)
            for first in range(0, columns.shape[1], _HVP_COLUMNS):
                chunk = columns[:, first : first + _HVP_COLUMNS]
                (product,) = torch.autograd.grad(
                    gradient, flat, grad_outputs=chunk.T, retain_graph=True, is_grads_batched=True
                )
                result[:, first : first + _HVP_COLUMNS] += product.T
        result /= len(targets)
        return result.squeeze(1) if single else result

    def hessian(self) -> torch.Tensor:
        """The dense Hessian [P, P] of the mean training loss, column block by column block (small P only)."""
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        hessian = self.hvp(eye)
        return (hessian + hessian.T) / 2  # symmetric up to rounding; make it exactly so for Cholesky
