"""Few-shot audit entry point: episodes -> meta-training -> task and instance influence -> (optionally) the
closed-form removal of the most harmful tasks checked against retraining. Returns tables; writes nothing.

Cost: one meta-training run; per meta-training checkpoint (task scores are averaged over them, see
auditor.fewshot.influence; only the final one with `average_checkpoints=False` or L-BFGS) one damped solve
(iterations x HVPs over `hessian_tasks` tasks) and one gradient per meta-training and validation task; one double
backward plus one gradient per support image per task for instance scores; `verify` adds one edit solve and one
full retraining. Assumes `pixels` rows align with `samples` rows and every class has at
least shots + queries samples. Classes (not samples) are split into train/val/test pools; `samples.split` is not used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from auditor.errors import ConfigError, DataError
from auditor.fewshot.backbones import Conv4Backbone, FunctionalBackbone, MLPBackbone
from auditor.fewshot.episodes import EpisodeSplits, TaskSet, build_episode_splits
from auditor.fewshot.influence import (
    InfluenceSettings,
    compute_instance_influence,
    compute_task_influence,
    edit_without_tasks,
)
from auditor.fewshot.label_issues import PrototypeLabelScores, embed_all, prototype_label_scores
from auditor.fewshot.learners import MAML, MetaLearner, ProtoNet, TaskBatch, materialize_tasks
from auditor.fewshot.training import MetaTrainSettings, evaluate_accuracy, evaluate_loss, train_meta
from auditor.schema import HARM_SCORE, LABEL, LABEL_ISSUE_SCORE, SAMPLE_ID, SUGGESTED_LABEL

logger = logging.getLogger(__name__)

LEARNERS = ("protonet", "maml")
TASK_SCORE = "score"


@dataclass(frozen=True, kw_only=True)
class FewShotOptions:
    """Everything but the episode shape, learner and seed (those are explicit arguments of run_fewshot_audit)."""

    n_train_tasks: int = field(default=200, metadata={"help": "Fixed meta-training tasks (scored, removable)."})
    n_val_tasks: int = field(default=50, metadata={"help": "Validation tasks: the influence target."})
    n_test_tasks: int = field(default=200, metadata={"help": "Test tasks: the reported few-shot accuracy."})
    class_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    train: MetaTrainSettings = field(default_factory=MetaTrainSettings)
    influence: InfluenceSettings = field(
        default_factory=lambda: InfluenceSettings(
            relative_damping=0.1, curvature="gauss_newton", max_iter=30, tolerance=1e-4, hessian_tasks=32
        )
    )
    inner_lr: float = field(default=0.4, metadata={"help": "MAML inner-loop SGD step."})
    inner_steps: int = field(default=1, metadata={"help": "MAML inner-loop steps."})
    second_order: bool = field(default=True, metadata={"help": "MAML through the inner loop (else first order)."})
    zero_head: bool = field(default=True, metadata={"help": "MAML starts with a zero per-way head."})
    width: int = field(default=64, metadata={"help": "Conv-4 channels (image inputs)."})
    mlp_hidden: tuple[int, ...] = field(default=(), metadata={"help": "Hidden widths for feature-vector inputs."})
    mlp_relu: bool = True
    embedding_dim: int | None = field(default=None, metadata={"help": "ProtoNet MLP output (None: input dim)."})
    removal_fraction: float = field(default=0.4, metadata={"help": "Share of most harmful tasks removed."})

    def __post_init__(self) -> None:
        if min(self.n_train_tasks, self.n_val_tasks, self.n_test_tasks) <= 1:
            raise ConfigError("n_train_tasks, n_val_tasks and n_test_tasks must each be at least 2")
        if not 0 < self.removal_fraction < 1:
            raise ConfigError(f"removal_fraction must be in (0, 1), got {self.removal_fraction}")


@dataclass(frozen=True)
class FewShotResult:
    """task_scores: one row per meta-training task (task_id, support_ids, query_ids, classes, score,
    predicted_val_loss_change, is_noisy_suspect = in the removed top share). sample_scores: one row per sample
    (sample_id, label, n_support, n_query, support_score, query_score, harm_score: NaN for samples in no
    meta-training task; label_issue_score, suggested_label: every sample). metrics: dotted paths. Scores: higher =
    more harmful / more likely mislabelled."""

    task_scores: pd.DataFrame
    sample_scores: pd.DataFrame
    metrics: dict[str, float]
    params: torch.Tensor
    splits: EpisodeSplits


def build_learner(
    name: str, pixels: torch.Tensor, *, ways: int, options: FewShotOptions
) -> tuple[MetaLearner, FunctionalBackbone]:
    """Conv-4 for images [n, C, H, W]; an MLP for feature vectors [n, d]."""
    if name not in LEARNERS:
        raise ConfigError(f"learner must be one of {LEARNERS}, got {name!r}")
    out = None if name == "protonet" else ways
    backbone: FunctionalBackbone
    if pixels.dim() == 4:
        backbone = Conv4Backbone(pixels.shape[1], image_size=pixels.shape[-1], out_features=out, width=options.width)
    else:
        dim = int(pixels.shape[1])
        head = (options.embedding_dim or dim) if out is None else out
        backbone = MLPBackbone(dim, head, hidden=options.mlp_hidden, relu=options.mlp_relu)
    if name == "protonet":
        return ProtoNet(backbone), backbone
    maml = MAML(
        backbone,
        inner_lr=options.inner_lr,
        inner_steps=options.inner_steps,
        second_order=options.second_order,
        zero_head=options.zero_head,
    )
    return maml, backbone


def _as_tensor(samples: pd.DataFrame, pixels: np.ndarray) -> torch.Tensor:
    if len(pixels) != len(samples):
        raise DataError(f"pixels has {len(pixels)} rows but the samples table has {len(samples)}; they must align")
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    if pixels.ndim not in (2, 4):
        raise DataError(f"pixels must be [n, d], [n, H, W] or [n, C, H, W], got shape {pixels.shape}")
    dtype = torch.float64 if pixels.ndim == 2 else torch.float32
    return torch.as_tensor(np.ascontiguousarray(pixels)).to(dtype)


def compute_sample_scores(
    samples: pd.DataFrame,
    tasks: TaskSet,
    support_scores: np.ndarray,
    query_scores: np.ndarray,
    label_scores: PrototypeLabelScores,
    classes: list[str],
) -> pd.DataFrame:
    """Per-sample sums of instance scores over every meta-training task the sample appears in: harm_score is the
    sum (removing the sample from all its tasks, to first order; NaN for a sample in no task). label_issue_score
    and suggested_label come from the leave-one-out prototypes (auditor.fewshot.label_issues) and cover every
    sample, including those of the validation and test class pools."""
    n = len(samples)
    n_support = np.bincount(tasks.support_rows.ravel(), minlength=n)
    n_query = np.bincount(tasks.query_rows.ravel(), minlength=n)
    support_sum = np.bincount(tasks.support_rows.ravel(), weights=support_scores.ravel(), minlength=n)
    query_sum = np.bincount(tasks.query_rows.ravel(), weights=query_scores.ravel(), minlength=n)
    appearances = n_support + n_query
    seen = appearances > 0
    harm = np.where(seen, support_sum + query_sum, np.nan)
    return pd.DataFrame(
        {
            SAMPLE_ID: samples[SAMPLE_ID].to_numpy(),
            LABEL: samples[LABEL].to_numpy(),
            "n_support": n_support,
            "n_query": n_query,
            "support_score": np.where(seen, support_sum, np.nan),
            "query_score": np.where(seen, query_sum, np.nan),
            HARM_SCORE: harm,
            LABEL_ISSUE_SCORE: label_scores.score,
            "label_issue_loss": label_scores.loss,
            SUGGESTED_LABEL: np.asarray(classes, dtype=object)[label_scores.suggested],
        }
    )


def run_fewshot_audit(
    samples: pd.DataFrame,
    pixels: np.ndarray,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 5,
    learner: str = "protonet",
    seed: int = 0,
    verify: bool = False,
    options: FewShotOptions | None = None,
) -> FewShotResult:
    """Meta-train `learner` on a fixed seeded task set, score tasks and images by influence on validation tasks,
    and with `verify` compare the closed-form removal of the most harmful tasks against retraining without them."""
    options = options or FewShotOptions()
    missing = {SAMPLE_ID, LABEL} - set(samples.columns)
    if missing:
        raise DataError(f"the samples table lacks column(s) {sorted(missing)}; few-shot audits need sample_id, label")
    inputs = _as_tensor(samples, pixels)
    splits = build_episode_splits(
        samples[LABEL].tolist(),
        ways=ways,
        shots=shots,
        queries=queries,
        n_train_tasks=options.n_train_tasks,
        n_val_tasks=options.n_val_tasks,
        n_test_tasks=options.n_test_tasks,
        class_fractions=options.class_fractions,
        seed=seed,
    )
    train, val, test = (materialize_tasks(s, inputs) for s in (splits.train, splits.val, splits.test))
    meta, _ = build_learner(learner, inputs, ways=ways, options=options)
    initial = meta.init_params(seed, dtype=inputs.dtype)
    settings = options.train
    start = time.perf_counter()
    trained = train_meta(meta, initial, train, settings)
    params = trained.params
    train_s = time.perf_counter() - start
    accuracy = evaluate_accuracy(meta, params, test)
    logger.info("%s meta-trained in %.1fs: %d-way %d-shot test accuracy %.3f", learner, train_s, ways, shots, accuracy)

    start = time.perf_counter()
    trajectory = [point for _, point in trained.checkpoints] if options.influence.average_checkpoints else []
    influence = compute_task_influence(
        meta, params, train, val, weight_decay=settings.weight_decay, settings=options.influence, trajectory=trajectory
    )
    support_scores, query_scores = compute_instance_influence(meta, params, train, influence.inverse_hvp)
    classes = sorted(samples[LABEL].astype(str).unique())
    label_index = pd.Categorical(samples[LABEL].astype(str), categories=classes).codes
    label_scores = prototype_label_scores(embed_all(meta, params, inputs), label_index)
    scoring_s = time.perf_counter() - start
    n_removed = max(1, round(options.removal_fraction * len(train)))
    removed = np.argsort(-influence.scores, kind="stable")[:n_removed]

    task_scores = splits.train.to_frame(samples[SAMPLE_ID].tolist())
    task_scores[TASK_SCORE] = influence.scores
    task_scores["predicted_val_loss_change"] = influence.predicted_val_loss_change
    task_scores["is_removed"] = np.isin(np.arange(len(train)), removed)
    metrics: dict[str, float] = {
        "fewshot.accuracy": accuracy,
        "fewshot.val_loss": evaluate_loss(meta, params, val),
        "fewshot.n_train_tasks": float(len(train)),
        "fewshot.train_seconds": train_s,
        "fewshot.scoring_seconds": scoring_s,
        "fewshot.solve.iterations": float(influence.solve.iterations),
        "fewshot.solve.residual": influence.solve.residual,
        "fewshot.solve.damping": influence.solve.damping,
        "fewshot.removed.n_tasks": float(n_removed),
    }
    if verify:
        metrics.update(
            _verify_removal(
                meta,
                initial,
                params,
                train,
                test,
                removed,
                settings,
                options,
                influence.mean_gradient,
                influence.solve.damping,
            )
        )
    return FewShotResult(
        task_scores=task_scores,
        sample_scores=compute_sample_scores(samples, splits.train, support_scores, query_scores, label_scores, classes),
        metrics=metrics,
        params=params,
        splits=splits,
    )


def _verify_removal(
    meta: MetaLearner,
    initial: torch.Tensor,
    params: torch.Tensor,
    train: list[TaskBatch],
    test: list[TaskBatch],
    removed: np.ndarray,
    settings: MetaTrainSettings,
    options: FewShotOptions,
    mean_grad: torch.Tensor,
    damping: float,
) -> dict[str, float]:
    """Edit (closed form) vs retraining from the same initialisation and schedule without the removed tasks."""
    start = time.perf_counter()
    edited, info = edit_without_tasks(
        meta,
        params,
        train,
        removed,
        weight_decay=settings.weight_decay,
        # The damping the scoring solve settled on (relative damping resolved once, not re-estimated).
        settings=replace(options.influence, damping=damping, relative_damping=None),
        mean_grad=mean_grad,
    )
    edit_s = time.perf_counter() - start
    kept = [task for i, task in enumerate(train) if i not in set(removed.tolist())]
    start = time.perf_counter()
    retrained = train_meta(meta, initial, kept, settings).params
    retrain_s = time.perf_counter() - start
    edit_accuracy = evaluate_accuracy(meta, edited, test)
    retrain_accuracy = evaluate_accuracy(meta, retrained, test)
    logger.info(
        "removing %d tasks: edit accuracy %.3f in %.2fs, retrain %.3f in %.1fs",
        len(removed),
        edit_accuracy,
        edit_s,
        retrain_accuracy,
        retrain_s,
    )
    return {
        "fewshot.edit_vs_retrain.accuracy_gap": abs(edit_accuracy - retrain_accuracy),
        "fewshot.edit_vs_retrain.speedup": retrain_s / max(edit_s, 1e-9),
        "fewshot.edit_vs_retrain.edit_accuracy": edit_accuracy,
        "fewshot.edit_vs_retrain.retrain_accuracy": retrain_accuracy,
        "fewshot.edit_vs_retrain.edit_seconds": edit_s,
        "fewshot.edit_vs_retrain.retrain_seconds": retrain_s,
        "fewshot.edit_vs_retrain.solve_residual": info.residual,
    }
