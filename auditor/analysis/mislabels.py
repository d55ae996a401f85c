"""Likely mislabels: a label-issue score, a confident-learning flag and a suggested label.

Evidence per sample: class probabilities averaged over training checkpoints of the models that trained
on it (training dynamics: mislabeled samples are learned late) and out-of-fold probabilities from the
model that did not (generalisation). Pure compute on arrays; no I/O.
"""

from __future__ import annotations

import numpy as np


def combine_label_evidence(probs_in: np.ndarray, probs_oof: np.ndarray | None) -> np.ndarray:
    """Average in-sample (checkpoint-averaged) and out-of-fold probabilities; rows without OOF keep in-sample."""
    if probs_oof is None:
        return probs_in
    has_oof = ~np.isnan(probs_oof).any(axis=1)
    combined = probs_in.copy()
    combined[has_oof] = 0.5 * (probs_in[has_oof] + probs_oof[has_oof])
    return combined


class LabelIssueDetector:
    """Confident learning (Northcutt et al. 2021) on combined class probabilities.

    A sample is a label issue when, among the classes whose probability reaches that class's own
    threshold (the mean probability the class gets on samples labeled with it), the most likely one is
    not the given label: the off-diagonal of the confident joint. No top-k, no fixed cut-off.
    `label_issue_score_` = 1 - p(given label): higher = more likely mislabeled.
    """

    def __init__(self, min_class_threshold: float = 1e-6) -> None:
        self.min_class_threshold = min_class_threshold

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> LabelIssueDetector:
        """Score `probs` [N, C] against integer `labels` [N]."""
        n, n_classes = probs.shape
        thresholds = np.full(n_classes, np.inf)
        for c in range(n_classes):
            members = labels == c
            if members.any():
                thresholds[c] = max(float(probs[members, c].mean()), self.min_class_threshold)
        above = probs >= thresholds[None, :]
        masked = np.where(above, probs, -np.inf)
        confident_class = masked.argmax(axis=1)
        has_confident = above.any(axis=1)
        self.thresholds_ = thresholds
        self.label_issue_score_ = 1.0 - probs[np.arange(n), labels]
        self.is_label_issue_ = has_confident & (confident_class != labels)
        suggested = probs.argmax(axis=1)
        suggested[self.is_label_issue_] = confident_class[self.is_label_issue_]
        self.suggested_label_ = suggested
        return self
