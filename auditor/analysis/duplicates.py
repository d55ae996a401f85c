"""Exact duplicates (identical bytes) and near duplicates (same picture after resizing, re-encoding or a small
shift); cross-split groups are leakage, groups with several labels are label conflicts.

Near duplicates are found in pixel space, not in the proxy model's embedding space: a classifier's
embedding is trained to put images of one class together, so there a copy is hardly closer than a
classmate, while a small blurred grey rendition of the pixels keeps copies far closer than any two
distinct images (measured on mini-ImageNet, Omniglot and the digits: a JPEG-40 or half-size copy is at
distance <= 0.04, the median nearest distinct image at 0.04-0.29). The threshold is calibrated on each
dataset from the distribution of nearest-neighbour distances. Pure compute; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.schema import CONTENT_HASH, LABEL, SAMPLE_ID, SPLIT

EXACT = "exact"
NEAR = "near"

# Bytes of one block of the all-pairs candidate search (bounds peak memory; 100k images: 35 rows a block).
_BLOCK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class DuplicateGroup:
    """One set of byte-identical (`match="exact"`) or near-identical (`match="near"`) samples."""

    group_id: str
    sample_ids: list[str]
    splits: list[str]
    labels: list[str]
    match: str = EXACT
    max_distance: float = 0.0

    @property
    def cross_split(self) -> bool:
        return len(set(self.splits)) > 1

    @property
    def conflicting_labels(self) -> bool:
        return len(set(self.labels)) > 1

    @property
    def cross_split_pairs(self) -> int:
        """Pairs of members that sit in different splits."""
        n = len(self.splits)
        same = sum(self.splits.count(s) * (self.splits.count(s) - 1) // 2 for s in set(self.splits))
        return n * (n - 1) // 2 - same


def find_exact_duplicates(samples: pd.DataFrame) -> list[DuplicateGroup]:
    """Groups of two or more samples sharing a content hash, ordered by their first sample id."""
    groups = []
    for content_hash, members in samples.groupby(CONTENT_HASH, sort=True):
        if len(members) < 2:
            continue
        members = members.sort_values(SAMPLE_ID)
        groups.append(
            DuplicateGroup(
                group_id=f"exact-{str(content_hash)[:12]}",
                sample_ids=members[SAMPLE_ID].tolist(),
                splits=members[SPLIT].astype(str).tolist(),
                labels=members[LABEL].astype(str).tolist(),
            )
        )
    return sorted(groups, key=lambda g: g.sample_ids[0])


class NearDuplicateDetector:
    """Pairs of images whose grey descriptors match within a shift of a few pixels.

    Distance between two descriptors (blurred 32x32 grey images, see `image_properties`): 1 minus the
    largest Pearson correlation of their overlap over every shift of up to `max_shift` pixels each way
    (about 6% of the side), so resized, re-encoded and slightly shifted copies stay close. Every image is
    compared with its `n_candidates` nearest images under an 8x8 shift-tolerant summary, screened at half
    resolution, and the best `n_verified` of them are measured in full (exhaustive comparison would be
    quadratic in the shift search). Two flat images are at distance 0 when their grey
    levels differ by less than `flat_level_tolerance`, else 1.

    Cost: the candidate search compares every image with every other (blocked, bounded memory): N^2 x 9
    shifts x 64 multiply-adds. Above `shift_search_limit` textured images it compares the unshifted summaries
    only (9x cheaper; 100k images then take minutes, not tens of minutes); shifts are still searched when
    verifying candidates, so only shifted copies whose unshifted summaries no longer agree can be missed.

    Threshold: the nearest-neighbour distances of most images describe how close distinct images of this
    dataset come; a pair is a near duplicate when its distance is a low outlier of that distribution
    (log distance below median - `z_threshold` x 1.4826 x MAD), never above `max_distance`, and always
    when at most `floor` (re-encodings). Exact duplicates (equal `hashes`) are not compared.

    Learned: `nn_distance_` [N] (NaN where not computed), `threshold_`, `pairs_` (columns `first`,
    `second`, `distance`; row positions, first < second).
    """

    def __init__(
        self,
        max_shift: int = 2,
        n_candidates: int = 25,
        n_verified: int = 3,
        z_threshold: float = 3.5,
        floor: float = 0.004,
        max_distance: float = 0.15,
        flat_level_tolerance: float = 8.0,
        shift_search_limit: int = 20_000,
    ) -> None:
        self.max_shift = max_shift
        self.n_candidates = n_candidates
        self.n_verified = n_verified
        self.z_threshold = z_threshold
        self.floor = floor
        self.max_distance = max_distance
        self.flat_level_tolerance = flat_level_tolerance
        self.shift_search_limit = shift_search_limit

    def fit(self, descriptors: np.ndarray, hashes: np.ndarray | None = None) -> NearDuplicateDetector:
        """`descriptors` [N, S, S] (NaN rows = unreadable, skipped); `hashes` [N] content hashes or None."""
        n = len(descriptors)
        valid = np.isfinite(descriptors.reshape(n, -1)).all(axis=1) if n else np.zeros(0, dtype=bool)
        hashes = np.asarray(hashes if hashes is not None else np.arange(n).astype(str), dtype=object)
        flat = valid & (np.nan_to_num(descriptors.reshape(n, -1)).std(axis=1) < 1e-3) if n else valid
        textured = np.flatnonzero(valid & ~flat)
        first, second, distance = self._textured_pairs(descriptors, textured, hashes)
        nn = np.full(n, np.nan)
        if len(first):
            order = np.lexsort((distance, first))
            # nearest distinct image of each query row (the first row per query in distance order)
            starts = np.r_[True, first[order][1:] != first[order][:-1]]
            nn[first[order][starts]] = distance[order][starts]
        self.nn_distance_ = nn
        self.threshold_ = self._calibrate(nn[np.isfinite(nn)])
        keep = distance <= self.threshold_
        pairs = pd.DataFrame({"first": first[keep], "second": second[keep], "distance": distance[keep]})
        pairs = pd.concat([pairs, self._flat_pairs(descriptors, np.flatnonzero(flat), hashes)], ignore_index=True)
        lo = np.minimum(pairs["first"], pairs["second"])
        hi = np.maximum(pairs["first"], pairs["second"])
        pairs = pd.DataFrame({"first": lo, "second": hi, "distance": pairs["distance"]})
        pairs = pairs.sort_values(["first", "second", "distance"]).drop_duplicates(["first", "second"])
        self.pairs_ = pairs.reset_index(drop=True).astype({"first": "int64", "second": "int64", "distance": "float64"})
        return self

    def _calibrate(self, nn: np.ndarray) -> float:
        """The distance below which a nearest neighbour is a low outlier of this dataset's `nn`."""
        usable = nn[nn > self.floor]
        if len(usable) < 5:
            return self.floor
        logs = np.log(usable)
        median = float(np.median(logs))
        mad = float(np.median(np.abs(logs - median)))
        threshold = float(np.exp(median - self.z_threshold * 1.4826 * mad)) if mad > 0 else self.floor
        return float(min(max(threshold, self.floor), self.max_distance))

    def _textured_pairs(
        self, descriptors: np.ndarray, rows: np.ndarray, hashes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, candidate row, verified distance) for each row's nearest candidates."""
        empty = np.zeros(0, dtype=np.int64)
        if len(rows) < 2:
            return empty, empty, np.zeros(0)
        images = descriptors[rows].astype(np.float32)
        summary = _shifted_summaries(images, self.max_shift)
        query = summary[:, len(summary[0]) // 2]
        k = min(self.n_candidates, len(rows) - 1)
        if len(rows) > self.shift_search_limit:
            summary = query[:, None]  # unshifted summaries only: see the class docstring
        flat_summary = summary.reshape(-1, summary.shape[2])
        firsts, seconds = [], []
        # Rows per block so one block of similarities stays near _BLOCK_BYTES however large the dataset.
        step = int(np.clip(_BLOCK_BYTES // (4 * len(flat_summary)), 1, 256))
        for start in range(0, len(rows), step):
            block = (query[start : start + step] @ flat_summary.T).reshape(-1, len(rows), summary.shape[1]).max(axis=2)
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
            nearest = np.argpartition(-block, k - 1, axis=1)[:, :k]
            firsts.append(np.repeat(np.arange(start, start + len(block)), k))
            seconds.append(nearest.ravel())
        first, second = np.concatenate(firsts), np.concatenate(seconds)
        distinct = hashes[rows[first]] != hashes[rows[second]]
        first, second = first[distinct], second[distinct]
        # Screen every candidate at half resolution (one-pixel shifts), verify the best few in full.
        halves = images.reshape(len(images), images.shape[1] // 2, 2, images.shape[2] // 2, 2).mean(axis=(2, 4))
        screen = _chunked_shift_distance(halves, first, second, max(self.max_shift // 2, 1))
        order = np.lexsort((screen, first))
        rank = np.arange(len(order)) - np.searchsorted(first[order], first[order], side="left")
        chosen = np.sort(order[rank < self.n_verified])
        first, second = first[chosen], second[chosen]
        distance = _chunked_shift_distance(images, first, second, self.max_shift)
        return rows[first], rows[second], distance

    def _flat_pairs(self, descriptors: np.ndarray, rows: np.ndarray, hashes: np.ndarray) -> pd.DataFrame:
        """Chains of flat images whose grey levels agree (neighbours in level order), as pairs."""
        if len(rows) < 2:
            return pd.DataFrame({"first": [], "second": [], "distance": []})
        levels = descriptors[rows].reshape(len(rows), -1).mean(axis=1)
        order = np.argsort(levels, kind="stable")
        close = np.diff(levels[order]) < self.flat_level_tolerance
        distinct = hashes[rows[order[:-1]]] != hashes[rows[order[1:]]]
        keep = close & distinct
        return pd.DataFrame(
            {"first": rows[order[:-1]][keep], "second": rows[order[1:]][keep], "distance": np.zeros(int(keep.sum()))}
        )


def _shifted_summaries(images: np.ndarray, max_shift: int) -> np.ndarray:
    """[N, 9, 64]: unit-norm, mean-centred 8x8 block means of each image shifted by -m, 0, +m pixels each way."""
    n, size, _ = images.shape
    cell = size // 8
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), mode="edge")
    out = []
    for dy in (-max_shift, 0, max_shift):
        for dx in (-max_shift, 0, max_shift):
            window = padded[:, max_shift + dy : max_shift + dy + size, max_shift + dx : max_shift + dx + size]
            blocks = window[:, : cell * 8, : cell * 8].reshape(n, 8, cell, 8, cell).mean(axis=(2, 4)).reshape(n, 64)
            blocks = blocks - blocks.mean(axis=1, keepdims=True)
            out.append(blocks / np.maximum(np.linalg.norm(blocks, axis=1, keepdims=True), 1e-6))
    return np.stack(out, axis=1).astype(np.float32)


def _chunked_shift_distance(images: np.ndarray, first: np.ndarray, second: np.ndarray, max_shift: int) -> np.ndarray:
    """`shift_distance` of the pairs (images[first], images[second]), in memory-bounded chunks."""
    parts = [
        shift_distance(images[first[i : i + 4096]], images[second[i : i + 4096]], max_shift)
        for i in range(0, len(first), 4096)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def shift_distance(first: np.ndarray, second: np.ndarray, max_shift: int) -> np.ndarray:
    """1 - max over shifts (|dx|, |dy| <= max_shift) of the Pearson correlation of the overlapping pixels."""
    size = first.shape[1]
    best = np.full(len(first), -1.0)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = first[:, max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)].reshape(len(first), -1)
            b = second[:, max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)].reshape(len(first), -1)
            a = a - a.mean(axis=1, keepdims=True)
            b = b - b.mean(axis=1, keepdims=True)
            denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                correlation = np.where(denominator > 0, (a * b).sum(axis=1) / denominator, -1.0)
            best = np.maximum(best, correlation)
    return np.clip(1.0 - best, 0.0, 2.0)


def group_near_duplicates(samples: pd.DataFrame, pairs: pd.DataFrame) -> list[DuplicateGroup]:
    """Connected groups of near pairs (row positions into `samples`); byte-identical copies of a member join it.

    Only groups with at least two distinct contents are returned (the rest are exact groups).
    """
    n = len(samples)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for a, b in zip(pairs["first"].to_numpy(), pairs["second"].to_numpy(), strict=True):
        parent[root(int(a))] = root(int(b))
    hashes = samples[CONTENT_HASH].astype(str).tolist() if CONTENT_HASH in samples else [str(i) for i in range(n)]
    first_of_hash: dict[str, int] = {}
    for i, content in enumerate(hashes):
        if content in first_of_hash:
            parent[root(i)] = root(first_of_hash[content])
        else:
            first_of_hash[content] = i
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    worst = pd.Series(pairs["distance"].to_numpy(), index=roots[pairs["first"].to_numpy()]).groupby(level=0).max()
    groups = []
    for group_root in np.unique(roots[pairs["first"].to_numpy()]) if len(pairs) else []:
        rows = np.flatnonzero(roots == group_root)
        if len({hashes[r] for r in rows}) < 2:
            continue
        members = samples.iloc[rows].sort_values(SAMPLE_ID)
        ids = members[SAMPLE_ID].astype(str).tolist()
        digest = hashlib.sha1("\x1f".join(ids).encode()).hexdigest()[:12]
        groups.append(
            DuplicateGroup(
                group_id=f"near-{digest}",
                sample_ids=ids,
                splits=members[SPLIT].astype(str).tolist(),
                labels=members[LABEL].astype(str).tolist(),
                match=NEAR,
                max_distance=float(worst.get(group_root, 0.0)),
            )
        )
    return sorted(groups, key=lambda g: g.sample_ids[0])
