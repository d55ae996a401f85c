"""Episode sampling: determinism, disjoint class pools, task structure, planted task noise."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.errors import DataError
from auditor.fewshot.episodes import build_episode_splits, plant_task_noise, sample_tasks


def _labels() -> np.ndarray:
    return np.repeat(np.array([f"c{i:02d}" for i in range(20)], dtype=object), 8)


def test_splits_are_seeded_and_use_disjoint_classes() -> None:
    kwargs = {
        "ways": 5,
        "shots": 1,
        "queries": 3,
        "n_train_tasks": 30,
        "n_val_tasks": 5,
        "n_test_tasks": 5,
        "class_fractions": (0.5, 0.25, 0.25),
    }
    first = build_episode_splits(_labels(), seed=3, **kwargs)
    again = build_episode_splits(_labels(), seed=3, **kwargs)
    other = build_episode_splits(_labels(), seed=4, **kwargs)
    np.testing.assert_array_equal(first.train.support_rows, again.train.support_rows)
    np.testing.assert_array_equal(first.test.query_rows, again.test.query_rows)
    assert not np.array_equal(first.train.support_rows, other.train.support_rows)
    pools = [set(s.classes.ravel()) for s in (first.train, first.val, first.test)]
    assert len(pools[0]) == 10
    assert not (pools[0] & pools[1])
    assert not (pools[0] & pools[2])
    assert not (pools[1] & pools[2])


def test_task_rows_match_their_local_labels() -> None:
    labels = _labels()
    tasks = sample_tasks(labels, [f"c{i:02d}" for i in range(10)], n_tasks=12, ways=4, shots=2, queries=3, seed=0)
    assert tasks.task_ids[0] == "task-00"
    assert len(tasks) == 12
    for t in range(len(tasks)):
        assert len(set(tasks.classes[t])) == 4
        assert not set(tasks.support_rows[t]) & set(tasks.query_rows[t])
        np.testing.assert_array_equal(labels[tasks.support_rows[t]], tasks.classes[t][tasks.support_labels[t]])
        np.testing.assert_array_equal(labels[tasks.query_rows[t]], tasks.classes[t][tasks.query_labels[t]])
    frame = tasks.to_frame([f"s{i}" for i in range(len(labels))])
    assert frame.loc[0, "support_ids"] == [f"s{i}" for i in tasks.support_rows[0]]
    assert len(frame.loc[0, "query_ids"]) == 12


def test_too_small_class_is_a_data_error_naming_it() -> None:
    labels = np.array(["a"] * 5 + ["b"] * 2 + ["c"] * 5, dtype=object)
    with pytest.raises(DataError, match="'b' has 2 samples"):
        sample_tasks(labels, ["a", "b", "c"], n_tasks=2, ways=2, shots=1, queries=2, seed=0)


def test_planted_task_noise_shuffles_labels_of_the_chosen_fraction() -> None:
    tasks = sample_tasks(_labels(), [f"c{i:02d}" for i in range(10)], n_tasks=20, ways=5, shots=1, queries=4, seed=0)
    noisy_tasks, noisy = plant_task_noise(tasks, fraction=0.2, seed=1)
    assert noisy.sum() == 4
    changed_support = (noisy_tasks.support_labels != tasks.support_labels).any(axis=1)
    np.testing.assert_array_equal(changed_support, noisy)  # 1-shot supports are deranged: every noisy task changes
    np.testing.assert_array_equal(noisy_tasks.query_labels[~noisy], tasks.query_labels[~noisy])
    for t in np.flatnonzero(noisy):
        assert sorted(noisy_tasks.query_labels[t]) == sorted(tasks.query_labels[t])
        assert (noisy_tasks.support_labels[t] != tasks.support_labels[t]).all()
