"""Seeded N-way K-shot episode sampling: a FIXED meta-training task set and held-out tasks on disjoint classes.

A task is the unit the task-level audit scores and removes. Episodes index rows of the caller's samples table
(and the pixel array aligned with it); outputs name samples by `sample_id`. Cost: O(n_tasks * ways * (shots +
queries)) index draws, no pixel copies. Assumes every class used has at least `shots + queries` samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from auditor.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TASK_ID = "task_id"
SUPPORT_IDS = "support_ids"
QUERY_IDS = "query_ids"
CLASSES = "classes"


@dataclass(frozen=True)
class TaskSet:
    """A fixed list of N-way K-shot tasks over rows of a samples table.

    Local label `i` of task `t` stands for the original class `classes[t, i]`; the random order of `classes[t]`
    is the task's label permutation. Support rows are class-major (`shots` rows of local label 0, then 1, ...),
    and so are query rows. `support_labels`/`query_labels` are the local labels the learner sees: they equal
    the class-major pattern unless noise was planted.
    """

    task_ids: tuple[str, ...]
    support_rows: np.ndarray  # int64 [T, ways * shots]
    query_rows: np.ndarray  # int64 [T, ways * queries]
    support_labels: np.ndarray  # int64 [T, ways * shots]
    query_labels: np.ndarray  # int64 [T, ways * queries]
    classes: np.ndarray  # object [T, ways]

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def ways(self) -> int:
        return int(self.classes.shape[1])

    def subset(self, keep: np.ndarray | Sequence[int]) -> TaskSet:
        """The tasks at positions `keep` (in that order)."""
        idx = np.asarray(keep, dtype=np.int64)
        return TaskSet(
            task_ids=tuple(self.task_ids[i] for i in idx),
            support_rows=self.support_rows[idx],
            query_rows=self.query_rows[idx],
            support_labels=self.support_labels[idx],
            query_labels=self.query_labels[idx],
            classes=self.classes[idx],
        )

    def to_frame(self, sample_ids: Sequence[str]) -> pd.DataFrame:
        """One row per task: task_id, support_ids, query_ids (lists of sample_id), classes (local-label order)."""
        ids = np.asarray(sample_ids, dtype=object)
        return pd.DataFrame(
            {
                TASK_ID: list(self.task_ids),
                SUPPORT_IDS: [list(ids[r]) for r in self.support_rows],
                QUERY_IDS: [list(ids[r]) for r in self.query_rows],
                CLASSES: [list(c) for c in self.classes],
            }
        )


@dataclass(frozen=True)
class EpisodeSplits:
    """Meta-training tasks (scored, removable), validation tasks (influence target) and test tasks (accuracy),
    drawn from three disjoint class pools."""

    train: TaskSet
    val: TaskSet
    test: TaskSet


def split_classes(
    labels: Sequence[object], *, fractions: tuple[float, float, float], seed: int
) -> tuple[list[object], list[object], list[object]]:
    """Partition the distinct labels into train/val/test class pools with the given fractions (seeded)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(f"class fractions must be three positive numbers summing to 1, got {fractions}")
    distinct = sorted(pd.unique(pd.Series(list(labels))), key=str)
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_train = round(fractions[0] * len(distinct))
    n_val = round(fractions[1] * len(distinct))
    pools = [order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]]
    train, val, test = ([distinct[i] for i in pool] for pool in pools)
    return train, val, test


def sample_tasks(
    labels: Sequence[object],
    classes: Sequence[object],
    *,
    n_tasks: int,
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    prefix: str = "task",
) -> TaskSet:
    """Draw `n_tasks` tasks from the rows whose label is in `classes` (classes without replacement within a task,
    samples without replacement within a class); rows may recur across tasks."""
    if min(n_tasks, ways, shots, queries) <= 0:
        raise ConfigError(f"n_tasks, ways, shots and queries must be positive, got {(n_tasks, ways, shots, queries)}")
    if len(classes) < ways:
        raise DataError(f"{ways}-way tasks need at least {ways} classes in the pool, found {len(classes)}")
    label_array = np.asarray(list(labels), dtype=object)
    per_class = {c: np.flatnonzero(label_array == c) for c in classes}
    short = [c for c, rows in per_class.items() if len(rows) < shots + queries]
    if short:
        raise DataError(
            f"class {str(short[0])!r} has {len(per_class[short[0]])} samples but {shots}-shot tasks with {queries} "
            f"queries need {shots + queries}; lower --shots/--queries or drop classes that small"
        )
    rng = np.random.default_rng(seed)
    pool = list(classes)
    support = np.empty((n_tasks, ways * shots), dtype=np.int64)
    query = np.empty((n_tasks, ways * queries), dtype=np.int64)
    chosen_classes = np.empty((n_tasks, ways), dtype=object)
    for t in range(n_tasks):
        picked = rng.choice(len(pool), size=ways, replace=False)
        for local, class_index in enumerate(picked):
            cls = pool[class_index]
            rows = rng.choice(per_class[cls], size=shots + queries, replace=False)
            support[t, local * shots : (local + 1) * shots] = rows[:shots]
            query[t, local * queries : (local + 1) * queries] = rows[shots:]
            chosen_classes[t, local] = cls
    width = len(str(n_tasks - 1))
    return TaskSet(
        task_ids=tuple(f"{prefix}-{t:0{width}d}" for t in range(n_tasks)),
        support_rows=support,
        query_rows=query,
        support_labels=np.tile(np.repeat(np.arange(ways), shots), (n_tasks, 1)),
        query_labels=np.tile(np.repeat(np.arange(ways), queries), (n_tasks, 1)),
        classes=chosen_classes,
    )


def build_episode_splits(
    labels: Sequence[object],
    *,
    ways: int,
    shots: int,
    queries: int,
    n_train_tasks: int,
    n_val_tasks: int,
    n_test_tasks: int,
    class_fractions: tuple[float, float, float],
    seed: int,
) -> EpisodeSplits:
    """Split classes into three disjoint pools and draw the fixed train, val and test task sets from them."""
    train_classes, val_classes, test_classes = split_classes(labels, fractions=class_fractions, seed=seed)
    common = {"ways": ways, "shots": shots, "queries": queries}
    splits = EpisodeSplits(
        train=sample_tasks(labels, train_classes, n_tasks=n_train_tasks, seed=seed + 1, prefix="train", **common),
        val=sample_tasks(labels, val_classes, n_tasks=n_val_tasks, seed=seed + 2, prefix="val", **common),
        test=sample_tasks(labels, test_classes, n_tasks=n_test_tasks, seed=seed + 3, prefix="test", **common),
    )
    logger.info(
        "Episodes: %d/%d/%d classes, %d/%d/%d tasks (%d-way %d-shot, %d queries)",
        len(train_classes),
        len(val_classes),
        len(test_classes),
        n_train_tasks,
        n_val_tasks,
        n_test_tasks,
        ways,
        shots,
        queries,
    )
    return splits


def plant_task_noise(tasks: TaskSet, *, fraction: float, seed: int) -> tuple[TaskSet, np.ndarray]:
    """Shuffle the labels of `fraction` of the tasks (support and query each permuted within themselves, so class
    counts are kept and every prototype stays defined); return the noisy task set and the boolean noisy mask."""
    rng = np.random.default_rng(seed)
    n_noisy = round(fraction * len(tasks))
    noisy = np.zeros(len(tasks), dtype=bool)
    noisy[rng.choice(len(tasks), size=n_noisy, replace=False)] = True
    support = tasks.support_labels.copy()
    query = tasks.query_labels.copy()
    for t in np.flatnonzero(noisy):
        support[t] = _derange(support[t], rng)
        query[t] = rng.permutation(query[t])
    return replace(tasks, support_labels=support, query_labels=query), noisy


def _derange(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of `labels` that moves every label class (a 1-shot support set otherwise keeps some by luck)."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return labels.copy()
    while True:
        mapping = rng.permutation(classes)
        if not np.any(mapping == classes):
            return mapping[np.searchsorted(classes, labels)]
