"""Ground truth for influence scores by retraining: leave-one-out, random subsets, LDS, removal curves.

Two problems are retrained. `ConvexProblem` (the oracle tests' model, below) and a run's own proxy model
(`check_by_retraining`, what `auditor eval RUN` and `auditor audit --verify` report): remove the top
`removal_fraction` of training rows by each score column and retrain, against removing random rows; and
retrain on random subsets for the LDS of each column on the validation loss. Same architecture, seed and
schedule as the run's main model, so the only difference between retrainings is the data.

The model is float64 multinomial logistic regression with an L2 penalty on every parameter, bias included:
    f(theta) = (1/n) sum_i w_i CE_i(theta) + (l2/2) |theta|^2,   w_i = 1 (kept) or 0 (removed),
solved by Newton's method with a backtracking line search to a gradient below 1e-11 (max abs entry).
Removing rows sets their weight to 0 and keeps the 1/n of the full data, which is exactly the
counterfactual an influence function linearises (the Hessian of f is H + l2 I with H the mean-loss
Hessian, so `damping = l2` is exact). Cost per fit: a few Newton steps, each O(n (C d)^2 + (C d)^3)
for C classes and d features + 1: meant for heads of up to a few hundred parameters per class.
Pure compute, no I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats
import torch
from torch import nn

from auditor.models.train import TrainSettings, predict, train_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogisticModel:
    """Fitted parameters: weight [C, d] and bias [C], float64."""

    weight: np.ndarray
    bias: np.ndarray

    def to_linear(self) -> nn.Linear:
        """The model as a float64 nn.Linear (the `head` the influence functions take)."""
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0]).double()
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight))
            layer.bias.copy_(torch.from_numpy(self.bias))
        return layer

    def losses(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-row cross-entropy [N]."""
        logits = features @ self.weight.T + self.bias
        return np.asarray(scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels])


@dataclass(frozen=True)
class ConvexProblem:
    """An L2 logistic regression on train rows, and the target rows whose loss influence is measured on."""

    train_features: np.ndarray
    train_labels: np.ndarray
    target_features: np.ndarray
    target_labels: np.ndarray
    n_classes: int
    l2: float

    def fit(
        self,
        sample_weight: np.ndarray | None = None,
        *,
        init: LogisticModel | None = None,
        tol: float = 1e-11,
        max_iter: int = 100,
    ) -> LogisticModel:
        """Minimise f(theta) with per-row weights (default all 1) by damped Newton; warm start from `init`."""
        x = np.hstack([self.train_features, np.ones((len(self.train_features), 1))]).astype(np.float64)
        n, d = x.shape
        c = self.n_classes
        weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        scaled = weights / n
        onehot = np.eye(c)[self.train_labels]
        theta = np.zeros((c, d)) if init is None else np.hstack([init.weight, init.bias[:, None]])

        def value(theta: np.ndarray) -> float:
            logits = x @ theta.T
            ce = scipy.special.logsumexp(logits, axis=1) - logits[np.arange(n), self.train_labels]
            return float(scaled @ ce + 0.5 * self.l2 * np.sum(theta * theta))

        current = value(theta)
        for _ in range(max_iter):
            probs = scipy.special.softmax(x @ theta.T, axis=1)
            gradient = (scaled[:, None] * (probs - onehot)).T @ x + self.l2 * theta
            if np.abs(gradient).max() < tol:
                break
            hessian = _logistic_hessian(x, probs, scaled) + self.l2 * np.eye(c * d)
            step = scipy.linalg.cho_solve(scipy.linalg.cho_factor(hessian), gradient.reshape(-1)).reshape(c, d)
            rate = 1.0
            decrease = float(np.sum(gradient * step))
            while True:
                candidate = theta - rate * step
                new = value(candidate)
                # Near the optimum f no longer decreases measurably in float64: accept the full Newton step.
                if new <= current - 1e-4 * rate * decrease or rate < 1e-10 or abs(new - current) < 1e-15:
                    break
                rate /= 2
            theta, current = candidate, new
        else:
            logger.warning("Newton stopped after %d iterations, gradient %.3g", max_iter, np.abs(gradient).max())
        return LogisticModel(weight=theta[:, :-1].copy(), bias=theta[:, -1].copy())

    def target_losses(self, model: LogisticModel) -> np.ndarray:
        """Per-target-row cross-entropy [T] of `model`."""
        return model.losses(self.target_features, self.target_labels)

    def retrain_target_losses(self, keep: np.ndarray, *, init: LogisticModel | None = None) -> np.ndarray:
        """Per-target-row losses [M, T] after retraining on each row-mask of keep [M, N] (warm-started)."""
        start = init if init is not None else self.fit()
        return np.stack([self.target_losses(self.fit(mask.astype(np.float64), init=start)) for mask in keep])

    def leave_one_out_harm(self, rows: np.ndarray | None = None) -> np.ndarray:
        """L_target(theta) - L_target(theta without row i) for each row (mean target loss).

        Positive = removing the row lowered the target loss: the direction of `harm`, and about harm / n.
        """
        full = self.fit()
        base = self.target_losses(full).mean()
        indices = np.arange(len(self.train_labels)) if rows is None else np.asarray(rows)
        keep = np.ones((len(indices), len(self.train_labels)), dtype=bool)
        keep[np.arange(len(indices)), indices] = False
        return np.asarray(base - self.retrain_target_losses(keep, init=full).mean(1))

    def removal_curve(self, scores: np.ndarray, sizes: list[int]) -> np.ndarray:
        """Mean target loss after removing the `k` highest-scoring rows, for each k in `sizes` (0 = full data)."""
        order = np.argsort(-np.asarray(scores), kind="stable")
        keep = np.ones((len(sizes), len(self.train_labels)), dtype=bool)
        for row, k in enumerate(sizes):
            keep[row, order[:k]] = False
        return np.asarray(self.retrain_target_losses(keep).mean(1))


def _logistic_hessian(x: np.ndarray, probs: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """sum_i scaled_i (diag p_i - p_i p_i^T) kron x_i x_i^T, [C d, C d] in class-major order."""
    n, d = x.shape
    c = probs.shape[1]
    outer = (np.sqrt(scaled)[:, None, None] * probs[:, :, None] * x[:, None, :]).reshape(n, c * d)
    hessian = -(outer.T @ outer)
    for k in range(c):
        block = (x * (scaled * probs[:, k])[:, None]).T @ x
        hessian[k * d : (k + 1) * d, k * d : (k + 1) * d] += block
    return hessian


def random_subsets(n: int, n_subsets: int, fraction: float, seed: int) -> np.ndarray:
    """[n_subsets, n] boolean masks, each keeping exactly round(fraction * n) rows, drawn with `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    size = round(fraction * n)
    keep = np.zeros((n_subsets, n), dtype=bool)
    for row in range(n_subsets):
        keep[row, rng.choice(n, size=size, replace=False)] = True
    return keep


def linear_datamodeling_score(harm: np.ndarray, keep: np.ndarray, actual_losses: np.ndarray) -> float:
    """LDS (Park et al. 2023): Spearman between predicted and actual target loss of each subset.

    The prediction for a subset is the sum of `harm` over its kept rows (higher harm kept = higher loss;
    the full-data loss and the 1/n scale do not change ranks). `harm` [N] with `actual_losses` [M] scores
    one target (e.g. the mean target loss); `harm` [N, T] with `actual_losses` [M, T] gives the mean over
    the T target columns of their Spearman correlations (Park et al.'s per-example LDS).
    """
    predicted = keep.astype(np.float64) @ harm
    if predicted.ndim == 1:
        return float(scipy.stats.spearmanr(predicted, actual_losses).statistic)
    correlations = [
        scipy.stats.spearmanr(predicted[:, t], actual_losses[:, t]).statistic for t in range(predicted.shape[1])
    ]
    return float(np.nanmean(correlations))


@dataclass(frozen=True, kw_only=True)
class RetrainCheckSettings:
    """How much retraining `check_by_retraining` does: 1 + columns + random_removals + subsets trainings."""

    subsets: int = 8
    subset_fraction: float = 0.5
    removal_fraction: float = 0.05
    random_removals: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subsets < 0 or self.random_removals < 1:
            raise ValueError("subsets must be >= 0 and random_removals >= 1")
        if not 0 < self.removal_fraction < 1 or not 0 < self.subset_fraction < 1:
            raise ValueError("removal_fraction and subset_fraction must be in (0, 1)")


def check_by_retraining(
    build: Callable[[], nn.Module],
    train: TrainSettings,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    scores: dict[str, np.ndarray],
    settings: RetrainCheckSettings,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain `build()` with `train` on subsets of `train_rows` and measure the validation loss each time.

    `scores[name]` is a harm column over `train_rows` (higher = removing the row should lower the validation
    loss; NaN rows are never removed first). Returns plain JSON: `full` (loss, accuracy on all rows),
    `removal` (per column and `random`: loss and accuracy after removing the top `removal_fraction`, and
    `loss_drop` = full loss - that loss: positive = the removal helped), `lds` per column (Spearman over
    `subsets` random subsets; absent when subsets < 2), and the seconds spent.
    """
    if not len(val_rows):
        raise ValueError("checking influence by retraining needs validation rows")
    started = time.perf_counter()
    n = len(train_rows)
    k = max(1, round(settings.removal_fraction * n))
    trainings = 0

    def validation(keep: np.ndarray) -> dict[str, float]:
        nonlocal trainings
        trainings += 1
        torch.manual_seed(train.seed)
        model = build()
        rows = train_rows[keep]
        train_model(model, pixels[rows], targets[rows], replace(train, checkpoints=1), progress=progress)
        probs, _ = predict(model, pixels[val_rows])
        labels = targets[val_rows].numpy()
        given = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
        return {"loss": float(-np.log(given).mean()), "accuracy": float((probs.argmax(1) == labels).mean())}

    full = validation(np.ones(n, dtype=bool))
    removal: dict[str, dict[str, float]] = {}
    for name, values in scores.items():
        order = np.argsort(-np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf), kind="stable")
        keep = np.ones(n, dtype=bool)
        keep[order[:k]] = False
        removal[name] = validation(keep)
        logger.info("Retrained without the top %d by %s: validation loss %.4f", k, name, removal[name]["loss"])
    rng = np.random.default_rng(settings.seed)
    draws = []
    for _ in range(settings.random_removals):
        keep = np.ones(n, dtype=bool)
        keep[rng.choice(n, size=k, replace=False)] = False
        draws.append(validation(keep))
    removal["random"] = {
        "loss": float(np.mean([d["loss"] for d in draws])),
        "accuracy": float(np.mean([d["accuracy"] for d in draws])),
        "loss_std": float(np.std([d["loss"] for d in draws])),
    }
    for entry in removal.values():
        entry["loss_drop"] = full["loss"] - entry["loss"]
    result: dict[str, Any] = {
        "n_train": n,
        "n_removed": k,
        "removal_fraction": settings.removal_fraction,
        "full": full,
        "removal": removal,
    }
    if settings.subsets >= 2:
        keep_masks = random_subsets(n, settings.subsets, settings.subset_fraction, settings.seed + 1)
        actual = np.array([validation(mask)["loss"] for mask in keep_masks])
        result["lds"] = {
            name: linear_datamodeling_score(np.nan_to_num(np.asarray(values, dtype=np.float64)), keep_masks, actual)
            for name, values in scores.items()
        }
        result["subsets"] = settings.subsets
        result["subset_fraction"] = settings.subset_fraction
        result["subset_losses"] = actual.tolist()  # with the seed, enough to score a new column without retraining
    result["trainings"] = trainings
    result["seconds"] = time.perf_counter() - started
    return result
