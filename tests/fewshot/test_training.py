"""Meta-training: checkpoints, determinism, and that learning beats chance on held-out classes."""

from __future__ import annotations

import pytest
import torch

from auditor.errors import ConfigError
from auditor.fewshot.training import MetaTrainSettings, evaluate_accuracy, train_meta
from tests.fewshot.conftest import BlobProblem, make_learner


@pytest.mark.parametrize("name", ["protonet", "maml"])
def test_adam_meta_training_keeps_checkpoints_is_seeded_and_learns(name: str, blob_problem: BlobProblem) -> None:
    learner = make_learner(name)
    initial = learner.backbone.init_params(0, dtype=torch.float64)
    settings = MetaTrainSettings(steps=60, meta_batch=4, learning_rate=0.05, weight_decay=0.1, checkpoints=3, seed=1)
    result = train_meta(learner, initial, blob_problem.train, settings)
    again = train_meta(learner, initial, blob_problem.train, settings)
    assert [step for step, _ in result.checkpoints] == [20, 40, 60]
    torch.testing.assert_close(result.checkpoints[-1][1], result.params)
    torch.testing.assert_close(result.params, again.params, rtol=0, atol=0)
    assert len(result.losses) == 60
    before = evaluate_accuracy(learner, initial, blob_problem.test)
    after = evaluate_accuracy(learner, result.params, blob_problem.test)
    assert after > max(before, 0.45)  # 3-way: chance is 1/3


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        MetaTrainSettings(optimizer="sgd")
