"""Tiny planted few-shot problems built in code: Gaussian class blobs in a few dimensions, float64 learners."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from auditor.fewshot.backbones import MLPBackbone
from auditor.fewshot.episodes import EpisodeSplits, build_episode_splits
from auditor.fewshot.learners import MAML, MetaLearner, ProtoNet, TaskBatch, materialize_tasks
from auditor.fewshot.training import MetaTrainSettings

DIM = 4
WAYS = 3
EXACT = MetaTrainSettings(optimizer="lbfgs", steps=500, learning_rate=1.0, weight_decay=1e-2)


@dataclass
class BlobProblem:
    """Features [n, DIM], integer labels, fixed episode splits and their tensors."""

    features: np.ndarray
    labels: np.ndarray
    splits: EpisodeSplits
    train: list[TaskBatch]
    val: list[TaskBatch]
    test: list[TaskBatch]


def make_blobs(
    *, n_classes: int = 15, per_class: int = 12, seed: int = 0, spread: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Class means ~ N(0, spread^2 I), samples ~ N(mean, I)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, spread, (n_classes, DIM))
    features = np.concatenate([m + rng.normal(0.0, 1.0, (per_class, DIM)) for m in means])
    return features, np.repeat(np.arange(n_classes), per_class)


def make_problem(*, n_train_tasks: int = 20, shots: int = 2, queries: int = 4, seed: int = 0) -> BlobProblem:
    features, labels = make_blobs(seed=seed)
    splits = build_episode_splits(
        labels,
        ways=WAYS,
        shots=shots,
        queries=queries,
        n_train_tasks=n_train_tasks,
        n_val_tasks=10,
        n_test_tasks=10,
        class_fractions=(0.6, 0.2, 0.2),
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


def make_learner(name: str) -> MetaLearner:
    """Linear ProtoNet embedding, or a linear MAML classifier with one second-order inner step."""
    if name == "protonet":
        return ProtoNet(MLPBackbone(DIM, DIM))
    return MAML(MLPBackbone(DIM, WAYS), inner_lr=0.5, inner_steps=1, second_order=True)


@pytest.fixture
def blob_problem() -> BlobProblem:
    return make_problem()
