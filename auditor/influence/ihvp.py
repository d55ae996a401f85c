"""Inverse-Hessian-vector products (H + damping I)^-1 v for an Objective's mean training loss.

One interface, five solvers (`IHVPSettings.method`), each fitted once and then applied to any vectors:
  exact     dense Hessian (P HVP columns) and its Cholesky factor: O(P^2) memory, O(P^3) time; small P only.
  cg        conjugate gradient on full-data HVPs, all right-hand sides at once: O(iterations * N) per
            solve; needs H + damping I positive definite (convex loss, or damping above |min eigenvalue|).
  lissa     Agarwal et al. (2017) stochastic recursion h <- v + h - (H_batch + damping I) h / scale,
            averaged over repeats: O(depth * batch) per solve, noisy; scale must exceed the top eigenvalue.
  ekfac     eigenvalue-corrected Kronecker factors per nn.Linear layer (George et al. 2018, as in
            Kronfluence), block-diagonal across layers, Fisher of the softmax cross-entropy: two passes
            over the data to fit, O(out^2 + in^2) per layer per solve. Linear layers with 2-D inputs only.
  identity  H taken as 0, so the product is v / damping: gradient dot products (one-checkpoint TracIn).
Pure compute, no I/O.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call

from auditor.errors import ConfigError
from auditor.influence.objective import LossFn, Objective, cross_entropy_losses

logger = logging.getLogger(__name__)

EXACT_MAX_PARAMS = 10_000
"""Largest parameter subset the exact solver accepts: its dense Hessian takes P^2 floats (800 MB in float64)."""

IHVPMethod = Literal["exact", "cg", "lissa", "ekfac", "identity"]
FisherLabels = Literal["expected", "sampled"]


@dataclass(frozen=True, kw_only=True)
class IHVPSettings:
    """How to apply (H + damping I)^-1. Plain data: safe to store in a run's manifest."""

    method: IHVPMethod = field(default="exact", metadata={"help": "exact | cg | lissa | ekfac | identity."})
    damping: float = field(
        default=1e-3,
        metadata={
            "help": "lambda in H + lambda I. For a model trained to its optimum with L2 weight decay wd "
            "(objective + wd/2 |theta|^2), wd is the exact choice; larger values regularise models far "
            "from their optimum or with a non-convex loss."
        },
    )
    cg_max_iter: int = field(default=200, metadata={"help": "Most conjugate-gradient iterations."})
    cg_tol: float = field(default=1e-8, metadata={"help": "CG stops at residual <= cg_tol * |v| per column."})
    lissa_depth: int | None = field(
        default=None, metadata={"help": "Recursion steps; None: enough for (1 - damping/scale)^depth <= 1e-3."}
    )
    lissa_repeats: int = field(default=4, metadata={"help": "Independent recursions averaged."})
    lissa_scale: float | None = field(
        default=None, metadata={"help": "Divides H; None: 1.5 x (top eigenvalue + damping), by power iteration."}
    )
    lissa_batch_size: int = field(default=64, metadata={"help": "Rows per stochastic Hessian sample."})
    ekfac_fisher: FisherLabels = field(
        default="expected",
        metadata={
            "help": "expected: exact Fisher over the model's predictive labels (one backward per class); "
            "sampled: one label drawn per row (one backward; Kronfluence's choice)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seeds LiSSA batches, power iteration and sampled labels."})

    def __post_init__(self) -> None:
        if self.method not in SOLVERS:
            raise ConfigError(f"influence method {self.method!r} is unknown; choose one of {sorted(SOLVERS)}")
        if not self.damping >= 0 or (self.damping == 0 and self.method in ("identity", "lissa")):
            raise ConfigError(f"damping must be >= 0 (> 0 for identity and lissa), got {self.damping}")
        for name in ("cg_max_iter", "lissa_repeats", "lissa_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lissa_depth is not None and self.lissa_depth <= 0:
            raise ConfigError(f"lissa_depth must be positive, got {self.lissa_depth}")
        if self.lissa_scale is not None and self.lissa_scale <= 0:
            raise ConfigError(f"lissa_scale must be positive, got {self.lissa_scale}")
        if self.ekfac_fisher not in ("expected", "sampled"):
            raise ConfigError(f"ekfac_fisher must be 'expected' or 'sampled', got {self.ekfac_fisher!r}")


class InverseHVP(ABC):
    """(H + damping I)^-1 applied to flat vectors, H the Hessian of an Objective's mean training loss."""

    name: ClassVar[str]

    def __init__(self, objective: Objective, settings: IHVPSettings) -> None:
        self.objective = objective
        self.settings = settings
        self.damping = settings.damping

    @abstractmethod
    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        """(H + damping I)^-1 @ columns for columns [P, K] in the objective's dtype."""

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """(H + damping I)^-1 @ vectors, for vectors [P] or [P, K]; same shape and dtype back."""
        single = vectors.dim() == 1
        columns = vectors.unsqueeze(1) if single else vectors
        if columns.shape[0] != self.objective.n_params:
            raise ValueError(f"vectors have {columns.shape[0]} rows; the objective has {self.objective.n_params}")
        result = self._solve(columns.to(self.objective.dtype)).to(vectors.dtype)
        return result.squeeze(1) if single else result

    def quadratic_form(self, rows: torch.Tensor) -> torch.Tensor:
        """g^T (H + damping I)^-1 g for every row g of rows [B, P] (self-influence). Costs one solve of B columns."""
        rows = rows.to(self.objective.dtype)
        return torch.linalg.vecdot(rows, self._solve(rows.T).T)


class IdentityInverseHVP(InverseHVP):
    """H taken as 0: the product is v / damping. Gradient dot products; the no-curvature baseline."""

    name: ClassVar[str] = "identity"

    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        return columns / self.damping


class ExactInverseHVP(InverseHVP):
    """Cholesky factor of the dense damped Hessian. Fitting costs P HVP columns and P^3/3 flops."""

    name: ClassVar[str] = "exact"

    def __init__(self, objective: Objective, settings: IHVPSettings) -> None:
        super().__init__(objective, settings)
        if objective.n_params > EXACT_MAX_PARAMS:
            raise ConfigError(
                f"exact inverse Hessian of {objective.n_params} parameters needs a dense {objective.n_params}^2 "
                f"matrix (limit {EXACT_MAX_PARAMS}); use method ekfac, cg or lissa"
            )
        damped = objective.hessian() + self.damping * torch.eye(
            objective.n_params, dtype=objective.dtype, device=objective.device
        )
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) != 0:
            smallest = float(torch.linalg.eigvalsh(damped)[0])
            raise ConfigError(
                f"H + damping I is not positive definite (smallest eigenvalue {smallest:.3g}): the loss is not "
                f"convex at these parameters; raise damping above {self.damping - smallest:.3g}"
            )
        self.cholesky = factor

    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(columns, self.cholesky)

    def quadratic_form(self, rows: torch.Tensor) -> torch.Tensor:
        """|L^-1 g|^2 with L the Cholesky factor: half the work of a full solve."""
        whitened = torch.linalg.solve_triangular(self.cholesky, rows.to(self.objective.dtype).T, upper=False)
        return (whitened * whitened).sum(0)


class ConjugateGradientInverseHVP(InverseHVP):
    """Conjugate gradient on (H + damping I) x = v, every column at once, on full-data HVPs. Nothing to fit."""

    name: ClassVar[str] = "cg"

    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        solution = torch.zeros_like(columns)
        residual = columns.clone()
        direction = residual.clone()
        squared = (residual * residual).sum(0)
        stop = (self.settings.cg_tol**2) * squared
        active = squared > stop
        iterations = 0
        while bool(active.any()) and iterations < self.settings.cg_max_iter:
            iterations += 1
            product = self.objective.hvp(direction[:, active]) + self.damping * direction[:, active]
            curvature = (direction[:, active] * product).sum(0)
            if bool((curvature <= 0).any()):
                raise ConfigError(
                    "conjugate gradient met non-positive curvature: H + damping I is not positive definite "
                    f"(damping {self.damping:g}); raise damping or use lissa/ekfac"
                )
            step = squared[active] / curvature
            solution[:, active] += step * direction[:, active]
            residual[:, active] -= step * product
            new_squared = (residual[:, active] * residual[:, active]).sum(0)
            direction[:, active] = residual[:, active] + (new_squared / squared[active]) * direction[:, active]
            squared[active] = new_squared
            active = squared > stop
        if bool(active.any()):
            worst = float((squared[active] / stop[active].clamp_min(1e-300)).sqrt().max()) * self.settings.cg_tol
            logger.warning(
                "CG stopped after %d iterations with %d of %d columns unconverged (relative residual up to %.2g)",
                iterations,
                int(active.sum()),
                columns.shape[1],
                worst,
            )
        else:
            logger.debug("CG converged in %d iterations for %d columns", iterations, columns.shape[1])
        return solution


class LissaInverseHVP(InverseHVP):
    """LiSSA: h_j = v + h_{j-1} - (H_batch + damping I) h_{j-1} / scale; result h_depth / scale, mean of repeats.

    Converges to (H + damping I)^-1 v when every eigenvalue of (H_batch + damping I) / scale is in (0, 2).
    The deterministic error shrinks like (1 - (lambda_min + damping) / scale)^depth; the stochastic error
    (batch Hessians) shrinks with the batch size and the number of repeats, not with depth.
    """

    name: ClassVar[str] = "lissa"

    def __init__(self, objective: Objective, settings: IHVPSettings) -> None:
        super().__init__(objective, settings)
        self.scale = settings.lissa_scale or 1.5 * (top_eigenvalue(objective, seed=settings.seed) + self.damping)
        self.depth = settings.lissa_depth or min(100_000, math.ceil(self.scale / self.damping * math.log(1e3)))
        logger.debug("LiSSA: scale %.4g, depth %d, %d repeats", self.scale, self.depth, settings.lissa_repeats)

    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.settings.seed)
        n, batch = self.objective.n_samples, min(self.settings.lissa_batch_size, self.objective.n_samples)
        limit = 1e6 * float(columns.abs().max()) * self.depth / self.scale + 1.0
        total = torch.zeros_like(columns)
        for _ in range(self.settings.lissa_repeats):
            estimate = columns.clone()
            for _ in range(self.depth):
                rows = torch.randint(n, (batch,), generator=generator)
                product = self.objective.hvp(estimate, rows) + self.damping * estimate
                estimate = columns + estimate - product / self.scale
            if not bool(torch.isfinite(estimate).all()) or float(estimate.abs().max()) > limit:
                raise ConfigError(
                    f"LiSSA diverged with scale {self.scale:.4g}: batch Hessians have eigenvalues above 2 x scale; "
                    "set lissa_scale higher or lissa_batch_size larger"
                )
            total += estimate / self.scale
        return total / self.settings.lissa_repeats


def top_eigenvalue(objective: Objective, *, iterations: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of the full-data Hessian by power iteration (`iterations` HVPs)."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(objective.n_params, generator=generator, dtype=objective.dtype).to(objective.device)
    vector /= vector.norm()
    value = 0.0
    for _ in range(iterations):
        product = objective.hvp(vector)
        value = float(product.norm())
        if value == 0.0:
            return 0.0
        vector = product / value
    return value


@dataclass
class _LinearBlock:
    """One nn.Linear layer of the parameter subset: where its weight/bias sit in the flat vector, and its factors."""

    module: nn.Linear
    weight_slice: slice
    bias_slice: slice | None
    input_basis: torch.Tensor | None = None  # eigenvectors of E[a a^T] (a with a trailing 1 when the bias is in)
    output_basis: torch.Tensor | None = None  # eigenvectors of E[g g^T], g = loss gradient at the layer output
    eigenvalues: torch.Tensor | None = None  # corrected: E[(Q_G^T g a^T Q_A)^2], shape [out, in(+1)]

    def gather(self, columns: torch.Tensor) -> torch.Tensor:
        """[K, out, in(+1)] matrices of this layer's weight (and bias as the last column) from flat [K, P] rows."""
        out_features, in_features = self.module.weight.shape
        weight = columns[:, self.weight_slice].reshape(-1, out_features, in_features)
        if self.bias_slice is None:
            return weight
        return torch.cat([weight, columns[:, self.bias_slice].unsqueeze(2)], dim=2)

    def scatter(self, matrices: torch.Tensor, into: torch.Tensor) -> None:
        """Write [K, out, in(+1)] matrices back into the flat rows `into` [K, P]."""
        in_features = self.module.weight.shape[1]
        into[:, self.weight_slice] = matrices[:, :, :in_features].reshape(len(matrices), -1)
        if self.bias_slice is not None:
            into[:, self.bias_slice] = matrices[:, :, in_features]

    def to_eigenbasis(self, matrices: torch.Tensor) -> torch.Tensor:
        assert self.output_basis is not None
        assert self.input_basis is not None
        return self.output_basis.T @ matrices @ self.input_basis


class EkfacInverseHVP(InverseHVP):
    """EK-FAC for the nn.Linear layers that make up the parameter subset (block-diagonal across layers).

    Per layer, the Fisher is approximated in the eigenbasis of the Kronecker factors A = E[a a^T] (layer
    inputs, with a 1 appended for the bias) and G = E[g g^T] (loss gradients at the layer outputs), with
    the eigenvalues replaced by the exact second moments of the per-sample gradients in that basis.
    The Fisher uses labels from the model's own predictive distribution (exactly, or one sample per row),
    so it equals the Gauss-Newton matrix: the true Hessian for a linear head on softmax cross-entropy.
    Requires the softmax cross-entropy loss and 2-D layer inputs.
    """

    name: ClassVar[str] = "ekfac"

    def __init__(self, objective: Objective, settings: IHVPSettings) -> None:
        super().__init__(objective, settings)
        if objective.loss_fn is not cross_entropy_losses:
            raise ConfigError("ekfac needs the softmax cross-entropy loss (cross_entropy_losses)")
        self.blocks = _linear_blocks(objective)
        self._fit()

    def _fit(self) -> None:
        generator = torch.Generator().manual_seed(self.settings.seed)
        dtype, device = self.objective.dtype, self.objective.device
        input_moments = {b.module: torch.zeros(0, dtype=dtype, device=device) for b in self.blocks}
        output_moments = dict(input_moments)
        for inputs, output_grads in self._iter_layer_terms(generator):
            for block in self.blocks:
                a, g = inputs[block.module], output_grads[block.module]
                update_a, update_g = a.T @ a, torch.einsum("mbo,mbp->op", g, g)
                seen = input_moments[block.module]
                input_moments[block.module] = update_a if seen.numel() == 0 else seen + update_a
                seen = output_moments[block.module]
                output_moments[block.module] = update_g if seen.numel() == 0 else seen + update_g
        for block in self.blocks:
            _, block.input_basis = torch.linalg.eigh(input_moments[block.module] / self.objective.n_samples)
            _, block.output_basis = torch.linalg.eigh(output_moments[block.module] / self.objective.n_samples)
            block.eigenvalues = torch.zeros(len(block.output_basis), len(block.input_basis), dtype=dtype, device=device)
        # Same seed: the sampled labels of the correction pass are those the factors were fitted on.
        generator = torch.Generator().manual_seed(self.settings.seed)
        for inputs, output_grads in self._iter_layer_terms(generator):
            for block in self.blocks:
                assert block.input_basis is not None
                assert block.output_basis is not None
                assert block.eigenvalues is not None
                a_rotated = inputs[block.module] @ block.input_basis
                g_rotated = output_grads[block.module] @ block.output_basis
                # A per-sample gradient g a^T is rank one, so its squared entries in the basis are an outer product.
                block.eigenvalues += (g_rotated * g_rotated).sum(0).T @ (a_rotated * a_rotated)
        for block in self.blocks:
            assert block.eigenvalues is not None
            block.eigenvalues /= self.objective.n_samples

    def _iter_layer_terms(
        self, generator: torch.Generator
    ) -> Iterator[tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, torch.Tensor]]]:
        """Per batch: each layer's inputs [B, in(+1)] and Fisher output gradients [M, B, out] (M label draws)."""
        objective = self.objective
        modules = [block.module for block in self.blocks]
        with_bias = {block.module: block.bias_slice is not None for block in self.blocks}
        objective.model.eval()
        leaves = {
            name: t.detach().requires_grad_(True) for name, t in objective.unflatten(objective.flat_params()).items()
        }
        captured: dict[nn.Module, tuple[torch.Tensor, GradientEdge]] = {}

        def capture(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if module in captured:
                raise ConfigError(f"ekfac: {type(module).__name__} is called twice in one forward pass")
            # The edge is taken now: a later in-place op (ReLU(inplace=True)) would otherwise redirect it.
            captured[module] = (args[0].detach(), get_gradient_edge(output))

        for start in range(0, objective.n_samples, objective.batch_size):
            rows = slice(start, start + objective.batch_size)
            captured.clear()
            handles = [module.register_forward_hook(capture) for module in modules]
            try:
                with torch.enable_grad():
                    logits = functional_call(
                        objective.model, {**objective._fixed, **leaves}, (objective._inputs(objective.inputs[rows]),)
                    )
            finally:
                for handle in handles:
                    handle.remove()
            inputs: dict[nn.Module, torch.Tensor] = {}
            for module in modules:
                if module not in captured:
                    raise ConfigError("ekfac: a Linear layer of the parameter subset is not used by the model")
                a = captured[module][0]
                if a.dim() != 2:
                    raise ConfigError(f"ekfac supports Linear layers with 2-D inputs; got input shape {tuple(a.shape)}")
                if with_bias[module]:
                    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
                inputs[module] = a
            edges = [captured[module][1] for module in modules]
            columns = []
            for pseudo in _fisher_output_grads(logits.detach(), self.settings.ekfac_fisher, generator):
                grads = torch.autograd.grad(logits, edges, grad_outputs=pseudo, retain_graph=True, allow_unused=True)
                columns.append(
                    [
                        pseudo.new_zeros(len(pseudo), module.out_features) if g is None else g
                        for module, g in zip(modules, grads, strict=True)
                    ]
                )
            output_grads: dict[nn.Module, torch.Tensor] = {
                module: torch.stack([c[i] for c in columns]) for i, module in enumerate(modules)
            }
            yield inputs, output_grads

    def _solve(self, columns: torch.Tensor) -> torch.Tensor:
        rows = columns.T
        result = torch.empty_like(rows)
        for block in self.blocks:
            assert block.eigenvalues is not None
            assert block.input_basis is not None
            assert block.output_basis is not None
            rotated = block.to_eigenbasis(block.gather(rows)) / (block.eigenvalues + self.damping)
            block.scatter(block.output_basis @ rotated @ block.input_basis.T, result)
        return result.T

    def quadratic_form(self, rows: torch.Tensor) -> torch.Tensor:
        """Sum over layers of |Q_G^T G Q_A|^2 / (eigenvalues + damping): no solve needed."""
        rows = rows.to(self.objective.dtype)
        total = torch.zeros(len(rows), dtype=rows.dtype, device=rows.device)
        for block in self.blocks:
            assert block.eigenvalues is not None
            rotated = block.to_eigenbasis(block.gather(rows))
            total += (rotated * rotated / (block.eigenvalues + self.damping)).sum((1, 2))
        return total


def _fisher_output_grads(logits: torch.Tensor, fisher: FisherLabels, generator: torch.Generator) -> list[torch.Tensor]:
    """Logit-gradient columns s whose outer products sum to the softmax Fisher diag(p) - p p^T per row.

    expected: s_c = sqrt(p_c) (e_c - p) for every class c (sum_c s_c s_c^T = diag(p) - p p^T exactly, as
    sum_c p_c = 1); sampled: one column p - e_y with y drawn from p, unbiased for the same matrix.
    """
    probs = torch.softmax(logits, dim=1)
    if fisher == "sampled":
        drawn = torch.multinomial(probs.detach().cpu().float(), 1, generator=generator).squeeze(1)
        return [probs - nn.functional.one_hot(drawn, probs.shape[1]).to(probs)]
    columns = []
    for c in range(probs.shape[1]):
        one_hot = torch.zeros_like(probs)
        one_hot[:, c] = 1.0
        columns.append(probs[:, c : c + 1].sqrt() * (one_hot - probs))
    return columns


def _linear_blocks(objective: Objective) -> list[_LinearBlock]:
    """The nn.Linear layers whose parameters make up the subset; ConfigError if any parameter is not in one."""
    offsets: dict[str, slice] = {}
    start = 0
    for name, numel in zip(objective.param_names, objective.numels, strict=True):
        offsets[name] = slice(start, start + numel)
        start += numel
    blocks, covered = [], set()
    for prefix, module in objective.model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight, bias = f"{prefix}.weight" if prefix else "weight", f"{prefix}.bias" if prefix else "bias"
        if weight not in offsets:
            continue
        bias_slice = offsets.get(bias) if module.bias is not None else None
        blocks.append(_LinearBlock(module, offsets[weight], bias_slice))
        covered.update({weight} | ({bias} if bias_slice is not None else set()))
    missing = [name for name in objective.param_names if name not in covered]
    if missing:
        raise ConfigError(f"ekfac supports nn.Linear weights (and their biases) only; not covered: {missing}")
    return blocks


SOLVERS: dict[str, type[InverseHVP]] = {
    cls.name: cls
    for cls in (ExactInverseHVP, ConjugateGradientInverseHVP, LissaInverseHVP, EkfacInverseHVP, IdentityInverseHVP)
}


def fit_inverse_hvp(objective: Objective, settings: IHVPSettings) -> InverseHVP:
    """The solver of `settings.method`, fitted to `objective` (factors, Cholesky, scale), ready for `solve`."""
    return SOLVERS[settings.method](objective, settings)


def inverse_hvp(
    model: nn.Module,
    params: Sequence[str] | None,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, torch.Tensor],
    vectors: torch.Tensor,
    *,
    method: IHVPMethod = "exact",
    damping: float,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    **options: Any,
) -> torch.Tensor:
    """(H + damping I)^-1 @ vectors ([P] or [P, K]) for the mean `loss_fn` of `model` over `data`.

    `params` names the parameter subset (None: all); `options` are further IHVPSettings fields
    (e.g. `cg_tol`, `lissa_depth`). Fit a solver with `fit_inverse_hvp` instead to reuse it across calls.
    """
    allowed = {f.name for f in fields(IHVPSettings)} - {"method", "damping"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown options {unknown}; allowed: {sorted(allowed)}")
    objective = Objective(
        model, data[0], data[1], params=params, loss_fn=loss_fn, prepare=prepare, batch_size=batch_size
    )
    return fit_inverse_hvp(objective, IHVPSettings(method=method, damping=damping, **options)).solve(vectors)
