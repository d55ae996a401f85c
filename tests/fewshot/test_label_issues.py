"""Leave-one-out prototype label scores against a brute-force oracle, and on a planted mislabel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from auditor.fewshot.backbones import Conv4Backbone, MLPBackbone
from auditor.fewshot.label_issues import MIN_LOO_ACCURACY, gate_label_issues, prototype_label_scores
from auditor.fewshot.learners import MAML, ProtoNet


def _brute_force(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recompute every prototype with row i removed, row by row."""
    n_classes = labels.max() + 1
    losses, nearest = np.full(len(labels), np.nan), np.zeros(len(labels), dtype=int)
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        if (labels[keep] == labels[i]).sum() == 0:
            continue
        prototypes = np.stack([embeddings[keep & (labels == c)].mean(0) for c in range(n_classes)])
        logits = -((embeddings[i] - prototypes) ** 2).sum(1)
        losses[i] = F.cross_entropy(torch.tensor(logits[None]), torch.tensor([labels[i]])).item()
        nearest[i] = int(np.argmax(logits))
    return losses, nearest


def test_matches_the_brute_force_leave_one_out_in_blocks() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    embeddings = rng.normal(size=(20, 3)) + labels[:, None] * 1.5
    expected_loss, expected_nearest = _brute_force(embeddings, labels)
    got = prototype_label_scores(torch.tensor(embeddings), labels, block=7)  # blocks that split classes
    np.testing.assert_allclose(got.loss, expected_loss, rtol=1e-10)
    np.testing.assert_array_equal(got.suggested, expected_nearest)
    np.testing.assert_allclose(got.score, 1 - np.exp(-expected_loss), atol=1e-12)  # 1 - p(given label)


def test_a_planted_mislabel_scores_highest_and_is_sent_home() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 8)
    embeddings = rng.normal(scale=0.3, size=(24, 2)) + np.array([[0, 0], [4, 0], [0, 4]])[labels]
    noisy = labels.copy()
    noisy[5] = 2  # an image of class 0 filed under class 2
    got = prototype_label_scores(torch.tensor(embeddings), noisy)
    assert int(np.argmax(got.loss)) == 5
    assert got.suggested[5] == 0


def test_a_singleton_class_has_no_score() -> None:
    labels = np.array([0, 0, 1])
    got = prototype_label_scores(torch.tensor([[0.0], [0.1], [5.0]]), labels)
    assert np.isnan(got.loss[2])
    assert np.isfinite(got.loss[:2]).all()


def test_maml_embeds_without_its_per_way_head_and_protonet_with_the_whole_network() -> None:
    x = torch.randn(6, 1, 16, 16)
    maml_backbone = Conv4Backbone(1, image_size=16, out_features=5, width=8)
    params = maml_backbone.init_params(0)
    assert MAML(maml_backbone, inner_lr=0.1, inner_steps=1).embed(params, x).shape == (
        6,
        8,
    )  # the width, not the 5 ways
    assert maml_backbone(params, x).shape == (6, 5)
    proto_backbone = Conv4Backbone(1, image_size=16, out_features=None, width=8)
    assert ProtoNet(proto_backbone).embed(proto_backbone.init_params(0), x).shape == (6, 8)
    mlp = MLPBackbone(4, 3, hidden=(6,))
    flat = mlp.init_params(0, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64)
    assert MAML(mlp, inner_lr=0.1, inner_steps=1).embed(flat, features).shape == (5, 6)
    assert ProtoNet(mlp).embed(flat, features).shape == (5, 3)


def test_the_gate_flags_only_candidates_sent_to_another_class() -> None:
    """Known answer: 10 scored images, 9 sit nearest their own class (accuracy 0.9 >= the gate); of the two loss
    outliers only the one whose nearest leave-one-out prototype is another class is flagged; NaN rows never."""
    given = np.array(["a"] * 5 + ["b"] * 5 + ["c"])
    suggested = given.copy()
    suggested[3] = "b"
    candidates = np.zeros(11, dtype=bool)
    candidates[[3, 7, 10]] = True  # 7 is an outlier that still sits nearest its own class
    scored = np.r_[np.ones(10, dtype=bool), False]
    flags, gate = gate_label_issues(candidates, given, suggested, scored)
    assert gate.loo_accuracy == 0.9
    assert gate.reliable
    assert np.flatnonzero(flags).tolist() == [3]


def test_a_weak_embedding_flags_nothing_and_says_so() -> None:
    """Random embeddings of 20 classes: leave-one-out prototypes are near chance (1/20), far below the gate, so
    no loss outlier is flagged; well-separated classes with one planted mislabel pass the gate and flag it."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 10)
    weak = prototype_label_scores(torch.tensor(rng.normal(size=(200, 8))), labels)
    flags, gate = gate_label_issues(np.ones(200, dtype=bool), labels, weak.suggested, np.isfinite(weak.loss))
    assert gate.loo_accuracy < 0.2
    assert not gate.reliable
    assert gate.min_loo_accuracy == MIN_LOO_ACCURACY
    assert not flags.any()
    centres = rng.normal(scale=10.0, size=(20, 8))
    noisy = labels.copy()
    noisy[0] = 1
    strong = prototype_label_scores(torch.tensor(centres[labels] + rng.normal(size=(200, 8))), noisy)
    outliers = strong.loss > np.nanpercentile(strong.loss, 99)
    flags, gate = gate_label_issues(outliers, noisy, strong.suggested, np.isfinite(strong.loss))
    assert gate.reliable
    assert flags[0]
    assert strong.suggested[0] == 0
