"""Checking scores by retraining the proxy model: planted mislabels, removed first, lower the validation loss."""

from __future__ import annotations

import numpy as np
import torch

from auditor.influence.evaluate import RetrainCheckSettings, check_by_retraining
from auditor.models.architectures import Conv4
from auditor.models.train import TrainSettings
from tests.class_patterns import class_pattern


def test_removing_planted_flips_beats_random_and_their_opposite() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    pixels = torch.from_numpy(np.stack([class_pattern(label, i) for i, label in enumerate(labels)]))[:, None]
    targets = torch.from_numpy(labels.copy())
    train_rows, val_rows = np.flatnonzero(np.arange(90) % 3), np.flatnonzero(np.arange(90) % 3 == 0)
    flipped = rng.choice(len(train_rows), size=12, replace=False)  # 20% of the 60 training rows
    targets[train_rows[flipped]] = (targets[train_rows[flipped]] + 1) % 3
    planted = np.zeros(len(train_rows))
    planted[flipped] = 1.0
    scores = {"planted": planted + 0.01 * rng.random(len(train_rows)), "opposite": -planted}
    train = TrainSettings(epochs=8, batch_size=10, learning_rate=0.05, checkpoints=1, seed=0)
    result = check_by_retraining(
        lambda: Conv4(1, 3, image_size=12, width=8),
        train,
        pixels,
        targets,
        train_rows,
        val_rows,
        scores,
        RetrainCheckSettings(subsets=6, removal_fraction=0.2, random_removals=2),
    )
    removal = result["removal"]
    assert result["n_removed"] == 12
    assert removal["planted"]["loss_drop"] > removal["random"]["loss_drop"] > removal["opposite"]["loss_drop"]
    assert removal["planted"]["loss_drop"] > 0
    assert set(result["lds"]) == {"planted", "opposite"}
    # Kept flips raise the loss, so the planted column predicts subset losses and its negation the reverse.
    assert result["lds"]["planted"] > 0 > result["lds"]["opposite"]
    assert result["trainings"] == 1 + 2 + 2 + 6
