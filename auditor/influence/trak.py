"""TRAK (Park et al. 2023): influence through randomly projected gradients and a Gauss-Newton kernel.

For each checkpoint (the "ensemble", averaged as in the paper) every scored row's per-sample loss
gradient g_i is projected to `dim` coordinates with a CountSketch (`CountSketch`: each parameter is sent
to one random coordinate with a random sign; a sparse Johnson-Lindenstrauss map with one nonzero per
parameter, so projecting costs O(B x P) and the P x dim matrix is never built). TRAK's output function
is the margin f = log(p / (1 - p)) of the given label, whose gradient is exactly -g / (1 - p), so

    phi_i = P g_i / (1 - p_i)           (rows of Phi, the features of the kernel K = Phi^T Phi)
    tau(t, i) = phi_t^T K^-1 phi_i (1 - p_i) = (P g_t)^T K^-1 (P g_i) / (1 - p_t)

and the change of target t's LOSS from up-weighting i is -(1 - p_t) tau(t, i). `harm` on a target set's
mean loss is therefore -(P g_T)^T K^-1 (P g_i), g_T the target set's mean loss gradient, which is the
influence-function formula with K in place of the Hessian (TRAK's kernel is a Gauss-Newton Hessian with
the per-row weights p (1 - p) dropped). `self_influence` is tau(i, i) (a leverage score).

Cost per checkpoint: one per-sample forward+backward pass over the scored rows (as TracIn), a sketch
of each gradient (O(B x P)), dim^2 per row to build K, one dim^3 Cholesky. Projected gradients are kept
in a memory-mapped file (N x dim float32: 8 KB a row at dim 2048), so RAM grows with the batch, not N.
Assumptions: eval-mode per-sample gradients (BatchNorm frozen); the ridge `damping` x mean diagonal of K
keeps K invertible when there are fewer rows than `dim`. Not sharded under torchrun (every rank computes
all rows).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditor.influence.gradients import iter_per_sample_grads, mean_gradient
from auditor.influence.tracin import TracInScores
from auditor.models.train import Checkpoint
from auditor.progress import track

logger = logging.getLogger(__name__)

DEFAULT_DIM = 2048
DEFAULT_DAMPING = 1e-3


@dataclass(frozen=True)
class CountSketch:
    """A seeded sparse random projection R^P -> R^dim: coordinate p goes to `buckets[p]` times `signs[p]`.

    E[<Sx, Sy>] = <x, y>, with variance about |x|^2 |y|^2 / dim (Charikar et al. 2002; Clarkson & Woodruff
    2013), the same order as a dense Gaussian projection.
    """

    buckets: torch.Tensor
    signs: torch.Tensor
    dim: int

    @classmethod
    def create(cls, n_params: int, dim: int, seed: int) -> CountSketch:
        """A random sketch; the identity (no projection) when `dim` >= `n_params`."""
        if dim >= n_params:
            return cls(buckets=torch.arange(n_params), signs=torch.ones(n_params), dim=n_params)
        generator = torch.Generator().manual_seed(seed)
        buckets = torch.randint(0, dim, (n_params,), generator=generator)
        signs = torch.randint(0, 2, (n_params,), generator=generator).float().mul_(2).sub_(1)
        return cls(buckets=buckets, signs=signs, dim=dim)

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        """Project rows of `flat` ([B, P] or [P]) to [B, dim] / [dim], in float32."""
        rows = flat.reshape(-1, flat.shape[-1]).float()
        out = torch.zeros(rows.shape[0], self.dim, dtype=torch.float32)
        out.index_add_(1, self.buckets, rows * self.signs)
        return out if flat.dim() == 2 else out[0]


def compute_trak(
    model: nn.Module,
    checkpoints: list[Checkpoint],
    pixels: torch.Tensor,
    targets: torch.Tensor,
    *,
    target_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    dim: int = DEFAULT_DIM,
    damping: float = DEFAULT_DAMPING,
    seed: int = 0,
    batch_size: int = 64,
    workdir: Path | None = None,
    progress: bool = False,
    desc: str = "trak",
) -> tuple[TracInScores, dict[str, np.ndarray]]:
    """TRAK self-influence and harm on each target set's mean loss, averaged over `checkpoints`.

    Returns (scores, harms): `scores.self_influence` (tau(i, i)) and `scores.losses` ([K, N]) as TracIn
    returns them, `scores.harm` None, and `harms[name]` the harm of every row on `target_sets[name]`
    (higher = removing the row is predicted to lower that set's loss). Projected gradients go to a
    temporary memory-mapped file under `workdir` (default: the system temporary directory).
    """
    n = len(targets)
    sets = target_sets or {}
    n_params = sum(p.numel() for p in model.parameters())
    sketch = CountSketch.create(n_params, dim, seed)
    dim = sketch.dim
    self_influence = np.zeros(n)
    losses = np.zeros((len(checkpoints), n))
    harms = {name: np.zeros(n) for name in sets}
    batches = -(-n // batch_size)
    with tempfile.TemporaryDirectory(prefix="trak-", dir=workdir) as tmp:
        projected = np.lib.format.open_memmap(Path(tmp) / "grads.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        for k, checkpoint in enumerate(checkpoints):
            model.load_state_dict(checkpoint.state)
            directions = (
                torch.stack([sketch(mean_gradient(model, p, t)) for p, t in sets.values()], dim=1).double()
                if sets
                else None
            )
            kernel = torch.zeros(dim, dim, dtype=torch.float64)
            one_minus_p = np.zeros(n)
            for rows, flat, batch_losses in track(
                iter_per_sample_grads(model, pixels, targets, batch_size=batch_size),
                total=batches,
                desc=f"{desc} ckpt {k + 1}/{len(checkpoints)}",
                enabled=progress,
            ):
                with torch.no_grad():
                    g = sketch(flat)
                    # 1 - p from the loss without cancellation: -expm1(-loss); clamped so a fitted row stays finite.
                    q = (-torch.expm1(-batch_losses.double())).clamp_min(1e-12)
                    phi = g.double() / q[:, None]
                    kernel.addmm_(phi.T, phi)
                    projected[rows] = g.numpy()
                    one_minus_p[rows] = q.numpy()
                    losses[k, rows] = batch_losses.double().numpy()
            ridge = damping * float(kernel.diagonal().mean()) + 1e-12
            kernel.diagonal().add_(ridge)
            factor = torch.linalg.cholesky(kernel)
            solved = torch.cholesky_solve(directions, factor) if directions is not None else None
            for start in range(0, n, 1024):
                block = torch.from_numpy(np.asarray(projected[start : start + 1024])).double()
                inverse_block = torch.cholesky_solve(block.T, factor).T
                self_influence[start : start + 1024] += (
                    torch.linalg.vecdot(block, inverse_block).numpy() / one_minus_p[start : start + 1024]
                )
                if solved is not None:
                    dots = (block @ solved).numpy()
                    for column, name in enumerate(sets):
                        harms[name][start : start + 1024] -= dots[:, column]
        del projected
    count = max(1, len(checkpoints))
    scores = TracInScores(self_influence=self_influence / count, harm=None, losses=losses)
    return scores, {name: values / count for name, values in harms.items()}
