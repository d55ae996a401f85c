"""Nearest neighbours (cosine similarity) of chosen samples in a feature space: the look-alikes shown beside a
suspected label error. Pure numpy on arrays given by the caller (no file I/O); the analysis stage picks
the features and stores the result in analysis.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_NEIGHBOURS = 5
_CHUNK_ROWS = 512
# Bytes of one chunk of similarities (a few transient copies exist at once): bounds memory for large datasets.
_CHUNK_BYTES = 64 * 2**20


def compute_nearest_neighbours(
    embeddings: np.ndarray, rows: np.ndarray, *, k: int = N_NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most cosine-similar other rows of each row in `rows`: (indices [R, k], similarities [R, k]).

    Most similar first; ties go to the lower row index so the answer does not depend on the BLAS build.
    Rows with a zero or non-finite embedding never appear as neighbours (their similarity is undefined).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(embeddings)
    k = min(k, max(n - 1, 0))
    if not len(rows) or k == 0:
        return np.zeros((len(rows), 0), dtype=np.int64), np.zeros((len(rows), 0))
    norms = np.linalg.norm(embeddings, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    unit = np.where(valid[:, None], embeddings / np.where(valid, norms, 1.0)[:, None], 0.0)
    indices = np.zeros((len(rows), k), dtype=np.int64)
    similarities = np.zeros((len(rows), k))
    step = int(np.clip(_CHUNK_BYTES // (8 * n), 1, _CHUNK_ROWS))
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        # rounding keeps float noise from reordering equal similarities between machines
        sims = np.round(unit[chunk] @ unit.T, 12)
        sims[:, ~valid] = -np.inf
        sims[np.arange(len(chunk)), chunk] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        for offset, row_sims in enumerate(sims):
            candidates = np.flatnonzero(row_sims >= kth[offset])  # ascending, so ties keep the lower index
            best = candidates[np.argsort(-row_sims[candidates], kind="stable")[:k]]
            indices[start + offset] = best
            similarities[start + offset] = row_sims[best]
    return indices, similarities


def describe_neighbours(
    sample_ids: np.ndarray, labels: np.ndarray, rows: np.ndarray, indices: np.ndarray, similarities: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """`{sample_id: [{sample_id, label, similarity}, ...]}` for each row in `rows`, most similar first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row, neighbours, sims in zip(rows, indices, similarities, strict=True):
        out[str(sample_ids[row])] = [
            {"sample_id": str(sample_ids[j]), "label": str(labels[j]), "similarity": round(float(s), 4)}
            for j, s in zip(neighbours, sims, strict=True)
            if np.isfinite(s)
        ]
    return out
