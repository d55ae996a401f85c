"""The estimators `--method` chooses between for `harm_score` and every `harm_<target>` column.

Each takes the main model (its checkpoints), its training rows and the target sets (name -> pixels,
labels) and returns, per target set, the harm of every training row: higher = removing the row is
predicted to lower that set's mean loss. Cost and assumptions of each (N scored rows, K checkpoints,
P parameters, T target sets):

  tracin             TracIn (Pruthi et al. 2020): -sum_k lr_k g_k(z) . g_k(target). K per-sample
                     gradient passes; assumes SGD-like training.
  tracin-normalized  The same with both gradients scaled to unit length (cosine; Pruthi et al.'s
                     "normalized" variant): stops a few large-gradient rows dominating. Same cost.
  trak               TRAK (Park et al. 2023, auditor.influence.trak): CountSketch-projected gradients
                     (dim 2048) and the kernel Phi^T Phi averaged over the K checkpoints. K gradient
                     passes plus dim^2 per row; gradients memory-mapped.
  if-exact / if-cg / if-lissa / if-ekfac
                     Influence functions (Koh & Liang 2017) on the final linear layer, where the loss is
                     convex, with that inverse-Hessian solver (auditor.influence.ihvp); last checkpoint
                     only. Cheap (features are already computed); blind to the backbone. if-exact needs
                     a head of at most _EXACT_MAX_PARAMS parameters. if-cg is the default: the best measured
                     trade-off (benchmarks/influence_eval.py, README "Choosing --method": the highest LDS and
                     the largest removal gain of the target-aware methods but Kronfluence, at a twentieth of
                     its time); models without a Linear `head` fall back to tracin (auditor.influence.engine).
  knn-shapley        Minus the exact kNN-Shapley value (Jia et al. 2019) in the final embedding (k=10).
                     O(T N log N); measures value for a kNN classifier, not the network.
  loss               Target-blind baseline: the row's mean loss over the checkpoints.
  grad-norm          Target-blind baseline: sum_k lr_k |g_k(z)|^2 (TracIn self-influence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditor.config import DEFAULT_HARM_METHOD, HARM_METHODS
from auditor.errors import ConfigError
from auditor.influence.ihvp import IHVPSettings
from auditor.influence.influence_functions import compute_head_influence
from auditor.influence.knn_shapley import compute_knn_shapley
from auditor.influence.tracin import TracInScores, compute_tracin
from auditor.influence.trak import compute_trak
from auditor.models.fitting import TrainedModel
from auditor.models.train import predict

logger = logging.getLogger(__name__)

DEFAULT_METHOD = DEFAULT_HARM_METHOD
_EXACT_MAX_PARAMS = 20_000
HEAD_DAMPING = 0.01


@dataclass
class HarmInputs:
    """What every estimator may use: the network (any checkpoint is loaded into it), the main model's
    checkpoints, its training pixels/labels and the target sets (name -> (pixels, labels))."""

    network: nn.Module
    main: TrainedModel
    pixels: torch.Tensor
    targets: torch.Tensor
    target_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    batch_size: int = 64
    progress: bool = False
    seed: int = 0
    workdir: Path | None = None
    head_damping: float = HEAD_DAMPING  # lambda of the if-* methods (LiSSA's depth grows as 1 / lambda)


Estimator = Callable[[HarmInputs], dict[str, np.ndarray]]


def _main_tracin(inputs: HarmInputs, **options: Any) -> TracInScores:
    """TracIn over the main model's checkpoints on its training rows (`options` go to compute_tracin)."""
    return compute_tracin(
        inputs.network,
        inputs.main.checkpoints,
        inputs.pixels,
        inputs.targets,
        batch_size=inputs.batch_size,
        progress=inputs.progress,
        **options,
    )


def _tracin(inputs: HarmInputs, *, normalized: bool = False) -> dict[str, np.ndarray]:
    scores = _main_tracin(inputs, extra_targets=inputs.target_sets, desc="tracin main", normalized=normalized)
    return scores.target_harm


def _trak(inputs: HarmInputs) -> dict[str, np.ndarray]:
    _, harms = compute_trak(
        inputs.network,
        inputs.main.checkpoints,
        inputs.pixels,
        inputs.targets,
        target_sets=inputs.target_sets,
        seed=inputs.seed,
        batch_size=inputs.batch_size,
        workdir=inputs.workdir,
        progress=inputs.progress,
    )
    return harms


def _embed(inputs: HarmInputs, pixels: torch.Tensor) -> torch.Tensor:
    inputs.network.load_state_dict(inputs.main.checkpoints[-1].state)
    _, embeddings = predict(inputs.network, pixels)
    return torch.from_numpy(embeddings.astype(np.float64))


def _head_influence(inputs: HarmInputs, *, solver: str) -> dict[str, np.ndarray]:
    head = getattr(inputs.network, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"--method if-{solver} needs a model whose final layer is an nn.Linear named `head`")
    n_params = head.weight.numel() + (head.bias.numel() if head.bias is not None else 0)
    if solver == "exact" and n_params > _EXACT_MAX_PARAMS:
        raise ConfigError(
            f"--method if-exact would invert a {n_params} x {n_params} Hessian; use --method if-ekfac or if-cg"
        )
    features = _embed(inputs, inputs.pixels)
    sets = {name: (_embed(inputs, p), t) for name, (p, t) in inputs.target_sets.items()}
    settings = IHVPSettings(method=solver, damping=inputs.head_damping)  # type: ignore[arg-type]
    scores = compute_head_influence(head, features, inputs.targets, settings, extra_targets=sets, self_influence=False)
    return scores.target_harm


def _knn_shapley(inputs: HarmInputs) -> dict[str, np.ndarray]:
    features = _embed(inputs, inputs.pixels).numpy()
    labels = inputs.targets.numpy()
    return {
        name: -compute_knn_shapley(features, labels, _embed(inputs, p).numpy(), t.numpy())
        for name, (p, t) in inputs.target_sets.items()
    }


def _target_blind(inputs: HarmInputs, *, use_loss: bool) -> dict[str, np.ndarray]:
    scores = _main_tracin(inputs, desc="baseline")
    values = scores.losses.mean(0) if use_loss else scores.self_influence
    return {name: values.copy() for name in inputs.target_sets}


METHODS: dict[str, Estimator] = {
    "tracin": _tracin,
    "tracin-normalized": lambda inputs: _tracin(inputs, normalized=True),
    "trak": _trak,
    "if-exact": lambda inputs: _head_influence(inputs, solver="exact"),
    "if-cg": lambda inputs: _head_influence(inputs, solver="cg"),
    "if-lissa": lambda inputs: _head_influence(inputs, solver="lissa"),
    "if-ekfac": lambda inputs: _head_influence(inputs, solver="ekfac"),
    "knn-shapley": _knn_shapley,
    "loss": lambda inputs: _target_blind(inputs, use_loss=True),
    "grad-norm": lambda inputs: _target_blind(inputs, use_loss=False),
}


assert tuple(METHODS) == HARM_METHODS, "auditor.config.HARM_METHODS must name every estimator"


def check_method(name: str) -> None:
    """Raise ConfigError naming the choices when `name` is not an estimator."""
    if name not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {name!r}")


def compute_harm(method: str, inputs: HarmInputs) -> dict[str, np.ndarray]:
    """Harm of every training row on every target set with `method` (one of METHODS)."""
    check_method(method)
    if not inputs.target_sets:
        return {}
    logger.info("Harm by %s on %d target set(s), %d rows", method, len(inputs.target_sets), len(inputs.targets))
    return METHODS[method](inputs)
