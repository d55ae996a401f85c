"""Nearest neighbours of suspected label errors: cosine order, ties, self and zero rows, and the analysis wiring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditor.analysis.neighbours import compute_nearest_neighbours, describe_neighbours
from auditor.analysis.run import compute_label_neighbours


def _on_circle(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_neighbours_are_most_similar_first_without_self() -> None:
    # angles 0, 10, 30, 70, 180 degrees; lengths differ to show only the direction counts
    embeddings = _on_circle([0, 10, 30, 70, 180]) * np.array([[1.0], [3.0], [0.5], [2.0], [1.0]])
    indices, similarities = compute_nearest_neighbours(embeddings, np.array([0, 3]), k=3)
    assert indices.tolist() == [[1, 2, 3], [2, 1, 0]]
    np.testing.assert_allclose(similarities[0], np.cos(np.deg2rad([10, 30, 70])), atol=1e-9)
    np.testing.assert_allclose(similarities[1], np.cos(np.deg2rad([40, 60, 70])), atol=1e-9)


def test_ties_go_to_the_lower_row_and_zero_rows_never_appear() -> None:
    embeddings = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [5.0, 0.0], [0.0, 1.0]])
    indices, similarities = compute_nearest_neighbours(embeddings, np.array([3]), k=3)
    assert indices.tolist() == [[0, 2, 4]]  # rows 0 and 2 tie at similarity 1; the zero row 1 is skipped
    np.testing.assert_allclose(similarities[0], [1.0, 1.0, 0.0], atol=1e-12)


def test_k_is_capped_by_the_other_rows_and_non_finite_neighbours_are_dropped() -> None:
    embeddings = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    indices, similarities = compute_nearest_neighbours(embeddings, np.array([0]), k=10)
    assert indices.shape == (1, 2)
    described = describe_neighbours(
        np.array(["a", "b", "c"]), np.array(["cat", "dog", "cat"]), np.array([0]), indices, similarities
    )
    assert described == {"a": [{"sample_id": "c", "label": "cat", "similarity": round(float(np.sqrt(0.5)), 4)}]}


def test_analysis_lists_pixel_neighbours_of_every_flagged_sample() -> None:
    # 4x4 "images": three patterns; s3 is labelled "a" but looks like the "b" images
    patterns = {"a": np.eye(4), "b": np.fliplr(np.eye(4)), "c": np.pad(np.ones((2, 2)), 1)}
    looks = ["a", "a", "a", "b", "b", "b", "b", "c", "c", "c"]
    rng = np.random.default_rng(0)
    descriptors = np.stack([patterns[w] * 200 + rng.normal(0, 5, (4, 4)) for w in looks])
    descriptors[9] = np.nan  # an unreadable file is nobody's neighbour
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(10)],
            "label": ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c"],
            "is_label_issue": [i == 3 for i in range(10)],
        }
    )
    neighbours = compute_label_neighbours(table, descriptors)
    assert list(neighbours) == ["s3"]
    assert {n["sample_id"] for n in neighbours["s3"][:3]} == {"s4", "s5", "s6"}
    assert [n["label"] for n in neighbours["s3"][:3]] == ["b", "b", "b"]
    assert "s9" not in {n["sample_id"] for n in neighbours["s3"]}
    assert compute_label_neighbours(table.iloc[:9], descriptors) == {}  # rows no longer match the descriptors


def test_memory_bounded_chunks_give_the_same_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    import auditor.analysis.neighbours as neighbours

    embeddings = np.random.default_rng(0).normal(size=(200, 8))
    rows = np.arange(0, 200, 3)
    expected = compute_nearest_neighbours(embeddings, rows, k=4)
    monkeypatch.setattr(neighbours, "_CHUNK_BYTES", 1)  # one row per chunk
    got = compute_nearest_neighbours(embeddings, rows, k=4)
    np.testing.assert_array_equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
