"""Tiny planted few-shot problems built in code: anisotropic Gaussian class blobs, float64 learners.

Class means vary only in the first half of the dimensions while within-class noise is large in the other half,
so there is a transferable metric to meta-learn (isotropic blobs leave nothing to learn but a temperature, and
then shuffled-label tasks act as a calibrating regulariser instead of harming the validation loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from auditor.fewshot.backbones import MLPBackbone
from auditor.fewshot.episodes import EpisodeSplits, TaskSet, build_episode_splits
from auditor.fewshot.learners import MAML, MetaLearner, ProtoNet, TaskBatch, materialize_tasks
from auditor.fewshot.training import MetaTrainSettings

DIM = 4
WAYS = 3
WEIGHT_DECAY = 0.1
EXACT = MetaTrainSettings(optimizer="lbfgs", steps=500, learning_rate=1.0, weight_decay=WEIGHT_DECAY)


@dataclass
class BlobProblem:
    """Features [n, DIM], integer labels, fixed episode splits and their tensors."""

    features: np.ndarray
    labels: np.ndarray
    splits: EpisodeSplits
    train: list[TaskBatch]
    val: list[TaskBatch]
    test: list[TaskBatch]

    def tensors(self, tasks: TaskSet) -> list[TaskBatch]:
        return materialize_tasks(tasks, torch.from_numpy(self.features))


def make_blobs(*, n_classes: int = 40, per_class: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Means ~ N(0, diag(1.5^2, 1.5^2, 0, 0)); samples ~ N(mean, diag(0.7^2, 0.7^2, 2^2, 2^2))."""
    rng = np.random.default_rng(seed)
    half = DIM // 2
    mean_scale = np.r_[np.full(half, 1.5), np.zeros(DIM - half)]
    noise_scale = np.r_[np.full(half, 0.7), np.full(DIM - half, 2.0)]
    means = rng.normal(0.0, 1.0, (n_classes, DIM)) * mean_scale
    features = np.concatenate([m + rng.normal(0.0, 1.0, (per_class, DIM)) * noise_scale for m in means])
    return features, np.repeat(np.arange(n_classes), per_class)


def make_problem(*, n_train_tasks: int = 20, shots: int = 2, queries: int = 6, seed: int = 0) -> BlobProblem:
    features, labels = make_blobs(seed=seed)
    splits = build_episode_splits(
        labels,
        ways=WAYS,
        shots=shots,
        queries=queries,
        n_train_tasks=n_train_tasks,
        n_val_tasks=40,
        n_test_tasks=20,
        class_fractions=(0.5, 0.25, 0.25),
        seed=seed,
    )
    pixels = torch.from_numpy(features)
    return BlobProblem(
        features=features,
        labels=labels,
        splits=splits,
        train=materialize_tasks(splits.train, pixels),
        val=materialize_tasks(splits.val, pixels),
        test=materialize_tasks(splits.test, pixels),
    )


def make_learner(name: str, *, second_order: bool = True) -> MetaLearner:
    """Linear ProtoNet embedding, or MAML on a deep linear net (DIM -> DIM -> WAYS) with one inner step."""
    if name == "protonet":
        return ProtoNet(MLPBackbone(DIM, DIM))
    backbone = MLPBackbone(DIM, WAYS, hidden=(DIM,), relu=False)
    return MAML(backbone, inner_lr=0.5, inner_steps=1, second_order=second_order)


@pytest.fixture
def blob_problem() -> BlobProblem:
    return make_problem()
