"""Exact duplicates: samples whose files have identical bytes; cross-split groups are leakage.

Near duplicates (embedding space) come with the Analysis work; this module owns the grouping logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from auditor.schema import CONTENT_HASH, LABEL, SAMPLE_ID, SPLIT


@dataclass(frozen=True)
class DuplicateGroup:
    """One set of byte-identical samples."""

    group_id: str
    sample_ids: list[str]
    splits: list[str]
    labels: list[str]

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
