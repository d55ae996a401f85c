"""Likely mislabels: a label-issue score, a flag and a suggested label for every sample.

Evidence per sample: class probabilities averaged over the training checkpoints of the models that
trained on it (training dynamics: mislabeled samples are learned late, if at all) and out-of-fold
probabilities from the model that did not (generalisation). They are combined as a product of experts
(normalised geometric mean), which keeps a class likely only if both views find it likely.
Pure compute on arrays; no I/O.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression

_EPS = 1e-12


def combine_label_evidence(probs_in: np.ndarray, probs_oof: np.ndarray | None) -> np.ndarray:
    """Normalised geometric mean of in-sample and out-of-fold probabilities; rows without OOF keep in-sample.

    On Omniglot small1 with 10% flipped labels this beats either view alone (AUROC 0.990 vs 0.988
    out-of-fold and 0.910 in-sample) and its arg-max disagrees with the given label on 90% of the flips.
    """
    if probs_oof is None:
        return probs_in
    has_oof = ~np.isnan(probs_oof).any(axis=1)
    combined = probs_in.copy()
    product = np.sqrt(np.clip(probs_in[has_oof], _EPS, None) * np.clip(probs_oof[has_oof], _EPS, None))
    combined[has_oof] = product / product.sum(axis=1, keepdims=True)
    return combined


class LabelIssueDetector:
    """Flags samples whose combined class probabilities prefer another label (the Bayes decision rule).

    `method="argmax"` (default): a label issue is a sample whose most probable class is not its label.
    `method="confident_learning"` (Northcutt et al. 2021): the most probable class among those reaching
    their per-class threshold (mean probability on samples given that label) is not the label; it is
    stricter when the probabilities are sharp in-sample.
    `label_issue_score_` = 1 - p(given label): higher = more likely mislabeled.
    `suggested_label_` = the flagged alternative for issues, else the most probable class.

    Reliability gate: a disagreement only says "the label is wrong" where the model is not mostly
    guessing. `reliability_` [N] is P(arg-max == given label | top-class probability), fitted by
    isotonic regression of agreement on confidence over all samples, using the out-of-fold
    probabilities when `fit` gets them (in-sample confidence is inflated by memorising the very labels
    in question). With a noise rate eta it underestimates the model's accuracy at that confidence by a
    factor (1 - eta). A disagreement is flagged only where `reliability_ >= min_reliability`.
    The default 0.2 was chosen on three runs (0 turns the gate off): Omniglot small1 with 10% moved
    labels keeps 362 of 378 disagreements (recall of the moved files 0.91 vs 0.95, precision 0.68 both
    ways; at 0.5 recall would fall to 0.57 with no gain in precision); clean Omniglot keeps 87 of 87;
    the mini-ImageNet subset (100 classes x 20 images, 8% out-of-fold accuracy: an under-fitted proxy)
    flags 61 instead of 1,685. `n_unreliable_` counts the disagreements the gate held back.
    """

    def __init__(self, method: str = "argmax", *, min_reliability: float = 0.2) -> None:
        self.method = method
        self.min_reliability = min_reliability

    def fit(self, probs: np.ndarray, labels: np.ndarray, *, held_out: np.ndarray | None = None) -> LabelIssueDetector:
        """Score `probs` [N, C] against integer `labels` [N].

        `held_out` [N, C] (out-of-fold probabilities, NaN rows where absent) is what the reliability gate
        judges by when given: a model's in-sample confidence is inflated by memorising the very labels in
        question, its held-out confidence is not. Rows without it are judged by `probs`.
        """
        if self.method not in ("argmax", "confident_learning"):
            raise ValueError(f"unknown method {self.method!r}")
        n, n_classes = probs.shape
        suggested = probs.argmax(axis=1)
        if self.method == "argmax":
            is_issue = suggested != labels
        else:
            thresholds = np.full(n_classes, np.inf)
            for c in range(n_classes):
                members = labels == c
                if members.any():
                    thresholds[c] = float(probs[members, c].mean())
            above = probs >= thresholds[None, :]
            confident_class = np.where(above, probs, -np.inf).argmax(axis=1)
            is_issue = above.any(axis=1) & (confident_class != labels)
            suggested = np.where(is_issue, confident_class, suggested)
        self.reliability_ = _reliability(probs, labels)
        if held_out is not None:
            has = ~np.isnan(held_out).any(axis=1)
            if has.sum() >= 2:
                self.reliability_[has] = _reliability(held_out[has], labels[has])
        reliable = self.reliability_ >= self.min_reliability
        self.n_unreliable_ = int((is_issue & ~reliable).sum())
        is_issue = is_issue & reliable
        self.label_issue_score_ = 1.0 - probs[np.arange(n), labels]
        self.is_label_issue_ = is_issue
        self.suggested_label_ = suggested
        return self


def _reliability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(arg-max == label | top-class probability) per row: isotonic regression of agreement on confidence."""
    confidence = probs.max(axis=1)
    agrees = (probs.argmax(axis=1) == labels).astype(np.float64)
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    result: np.ndarray = isotonic.fit(confidence, agrees).predict(confidence)
    return result
