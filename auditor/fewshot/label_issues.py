"""Few-shot label issues: each image's leave-one-out loss under the meta-learned embedding's class prototypes.

A ProtoNet classifies an image by its distance to class prototypes (means of embedded images). Leaving image i out
of its own class's prototype and asking which class it then belongs to is the exact, closed-form effect of
removing i on its own prediction: the instance-level self-influence that approximate methods estimate. An image
filed under the wrong class sits far from its class once it no longer pulls that prototype towards itself, so
its leave-one-out loss is high and the nearest prototype is the suggested label. Task-level influence on the
validation tasks (harm_score) does not separate these: a mislabelled image hurts the tasks it is in about as
much as an ordinary hard one.

For MAML the same is computed on the backbone without its per-way linear head (the meta-learned features).
Cost: one forward per image plus an n x C distance matrix, computed in blocks of rows; classes with a single
image have no leave-one-out prototype and get NaN.

`gate_label_issues` decides which outliers become flags: only images whose nearest leave-one-out prototype is
another class, and none at all when the embedding can hardly tell the classes apart (its leave-one-out prototype
accuracy, over all classes at once, is below `MIN_LOO_ACCURACY`). The gate is deliberately low: label noise
lowers that accuracy too (each mislabelled image is a miss), so it cannot tell a weak embedding from noisy
labels. Measured on Omniglot small1 (136 classes, ProtoNet width 32, 40 tasks): clean labels 0.52 / 0.56 after
60 / 400 meta-steps, 10% of images moved 0.40 / 0.43, and 0.26 after 8 steps; a gate at 0.5 would have silenced 76
true flags of 79 (moved, 60 steps) and kept 133 false ones (clean, 400 steps). It stops flagging from a barely
trained embedding only; the robust-z rule still flags the hard tail of clean data (37 and 133 images above).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from auditor.fewshot.learners import MetaLearner

EMBED_BATCH = 256
MIN_LOO_ACCURACY = 0.25
"""Leave-one-out prototype accuracy below which no label issue is flagged (the embedding is not reliable)."""


@dataclass(frozen=True)
class PrototypeLabelScores:
    """loss: cross-entropy of the given label against leave-one-out prototypes (higher = more likely mislabelled;
    NaN for singleton classes); suggested: index into the class list of the nearest leave-one-out prototype."""

    loss: np.ndarray
    suggested: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """1 - p(given label) under the leave-one-out prototypes: in [0, 1] like the main audit's score, same order."""
        return -np.expm1(-self.loss)


def embed_all(learner: MetaLearner, params: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Embeddings of every row, in fixed blocks of rows (BatchNorm uses batch statistics, so blocks are fixed)."""
    with torch.no_grad():
        blocks = [learner.embed(params, inputs[i : i + EMBED_BATCH]) for i in range(0, len(inputs), EMBED_BATCH)]
    return torch.cat(blocks).reshape(len(inputs), -1).to(torch.float64)


def prototype_label_scores(embeddings: torch.Tensor, labels: np.ndarray, *, block: int = 1024) -> PrototypeLabelScores:
    """Leave-one-out prototype loss and nearest class of every row; `labels` are integer class indices."""
    n = len(labels)
    y = torch.as_tensor(np.array(labels, dtype=np.int64))
    n_classes = int(y.max()) + 1 if n else 0
    onehot = F.one_hot(y, n_classes).to(embeddings.dtype)
    sums = onehot.T @ embeddings
    counts = onehot.sum(0)
    prototypes = sums / counts.clamp_min(1)[:, None]
    loss = np.full(n, np.nan)
    suggested = np.zeros(n, dtype=np.int64)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n))
        x, own = embeddings[rows], y[rows]
        distances = torch.cdist(x, prototypes).pow(2)
        own_count = counts[own]
        # The own class's mean without this row: (sum - x) / (count - 1).
        loo = (sums[own] - x) / (own_count - 1).clamp_min(1)[:, None]
        distances[torch.arange(len(rows)), own] = (x - loo).pow(2).sum(1)
        logits = -distances
        block_loss = F.cross_entropy(logits, own, reduction="none")
        block_loss[own_count < 2] = float("nan")
        loss[rows.numpy()] = block_loss.numpy()
        suggested[rows.numpy()] = logits.argmax(1).numpy()
    return PrototypeLabelScores(loss=loss, suggested=suggested)


@dataclass(frozen=True)
class LabelIssueGate:
    """Whether label-issue flags were allowed: `loo_accuracy` is the share of scored images whose nearest
    leave-one-out prototype is their own class; flags are kept only if it reaches `min_loo_accuracy`."""

    loo_accuracy: float
    min_loo_accuracy: float

    @property
    def reliable(self) -> bool:
        return self.loo_accuracy >= self.min_loo_accuracy


def gate_label_issues(
    candidates: np.ndarray,
    given: np.ndarray,
    suggested: np.ndarray,
    scored: np.ndarray,
    *,
    min_loo_accuracy: float = MIN_LOO_ACCURACY,
) -> tuple[np.ndarray, LabelIssueGate]:
    """Flags = `candidates` (e.g. loss outliers) whose suggested class differs from the given one, or no flags if
    the leave-one-out accuracy over the `scored` rows is below `min_loo_accuracy`. Returns flags and the gate."""
    disagree = np.asarray(given) != np.asarray(suggested)
    scored = np.asarray(scored, dtype=bool)
    accuracy = float((~disagree[scored]).mean()) if scored.any() else 0.0
    gate = LabelIssueGate(loo_accuracy=accuracy, min_loo_accuracy=min_loo_accuracy)
    if not gate.reliable:
        return np.zeros(len(disagree), dtype=bool), gate
    return np.asarray(candidates, dtype=bool) & disagree & scored, gate
