"""Label-issue detection on planted flips with known answers."""

from __future__ import annotations

import numpy as np

from auditor.analysis.harmful import HarmfulDetector
from auditor.analysis.mislabels import LabelIssueDetector, combine_label_evidence, knn_label_posterior


def _planted(n: int = 300, n_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), truth] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.random(n) < 0.1
    given[flipped] = (truth[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return probs, given, truth, flipped


def test_argmax_rule_finds_planted_flips_and_suggests_truth() -> None:
    probs, given, truth, flipped = _planted()
    detector = LabelIssueDetector(min_reliability=0.0).fit(probs, given)  # the plain arg-max rule
    found = detector.is_label_issue_
    assert (found & flipped).sum() / flipped.sum() > 0.85
    assert (found & flipped).sum() / found.sum() > 0.6
    assert (detector.suggested_label_[found & flipped] == truth[found & flipped]).mean() > 0.9
    # the score ranks flips first
    order = np.argsort(-detector.label_issue_score_)
    assert flipped[order[: flipped.sum() // 2]].mean() > 0.9


def test_reliability_gate_keeps_a_good_models_disagreements() -> None:
    probs, given, _, flipped = _planted()
    gated = LabelIssueDetector().fit(probs, given)
    ungated = LabelIssueDetector(min_reliability=0.0).fit(probs, given)
    disagree = probs.argmax(1) != given
    np.testing.assert_array_equal(ungated.is_label_issue_, disagree)
    # 4 classes, a model right ~85% of the time: every disagreement it finds on a planted flip stays
    assert (gated.is_label_issue_ & flipped).sum() >= 0.95 * (ungated.is_label_issue_ & flipped).sum()
    assert gated.n_unreliable_ == int((disagree & ~gated.is_label_issue_).sum())
    # a stricter gate drops its low-confidence disagreements, where it is right less than half the time
    strict = LabelIssueDetector(min_reliability=0.5).fit(probs, given)
    assert strict.is_label_issue_.sum() < gated.is_label_issue_.sum()
    assert not (strict.is_label_issue_ & ~gated.is_label_issue_).any()


def test_reliability_is_judged_on_held_out_probabilities() -> None:
    # In-sample probabilities that memorised every label look reliable; out of fold the model guesses.
    rng = np.random.default_rng(0)
    n, n_classes = 1000, 50
    given = rng.integers(0, n_classes, n)
    guesses = rng.dirichlet(np.full(n_classes, 0.5), n)
    memorised = 0.5 * guesses
    memorised[np.arange(n), given] += 0.5
    evidence = np.sqrt(memorised * guesses)
    evidence /= evidence.sum(1, keepdims=True)
    disagree = evidence.argmax(1) != given
    assert disagree.sum() > 100
    judged_in_sample = LabelIssueDetector().fit(evidence, given)
    judged_held_out = LabelIssueDetector().fit(evidence, given, held_out=guesses)
    assert judged_held_out.is_label_issue_.sum() <= 0.1 * disagree.sum()
    assert judged_held_out.is_label_issue_.sum() < judged_in_sample.is_label_issue_.sum()


def test_reliability_gate_silences_a_model_that_is_mostly_wrong() -> None:
    # 100 classes, a model that guesses: it disagrees with almost every (correct) label.
    rng = np.random.default_rng(0)
    n, n_classes = 2000, 100
    given = rng.integers(0, n_classes, n)
    probs = rng.dirichlet(np.full(n_classes, 0.5), n)
    # ...except on a confident fifth, where it is right, and a few confident disagreements there: flips.
    sure = rng.random(n) < 0.2
    probs[sure] *= 0.05
    probs[sure, given[sure]] += 0.95
    flips = np.flatnonzero(sure)[:10]
    probs[flips] = probs[flips][:, ::-1]
    detector = LabelIssueDetector().fit(probs, given)
    disagree = probs.argmax(1) != given
    assert disagree.sum() > 1400
    assert detector.is_label_issue_.sum() <= 30
    assert detector.is_label_issue_[flips].all(), "confident disagreements of a reliable regime stay flagged"
    assert detector.n_unreliable_ == disagree.sum() - detector.is_label_issue_.sum()


def test_confident_learning_rule_is_a_subset_when_probs_are_sharp() -> None:
    probs, given, _, flipped = _planted(seed=1)
    cl = LabelIssueDetector(method="confident_learning").fit(probs, given)
    assert (cl.is_label_issue_ & flipped).sum() > 0.5 * flipped.sum()


def test_product_of_experts_keeps_in_sample_rows_without_oof() -> None:
    probs_in = np.array([[0.9, 0.1], [0.2, 0.8]])
    probs_oof = np.array([[0.5, 0.5], [np.nan, np.nan]])
    combined = combine_label_evidence(probs_in, probs_oof)
    np.testing.assert_allclose(combined[1], probs_in[1])
    expected = np.sqrt([0.45, 0.05])
    np.testing.assert_allclose(combined[0], expected / expected.sum())
    np.testing.assert_allclose(combined.sum(1), 1.0)


def test_knn_posterior_counts_neighbour_labels_with_a_half_count_prior() -> None:
    rng = np.random.default_rng(0)
    reference = np.vstack([rng.normal(0, 0.1, (6, 2)), rng.normal(5, 0.1, (6, 2))])
    labels = np.repeat([0, 1], 6)
    labels[0] = 1  # one row of the first cluster carries the other cluster's label
    query = np.array([[0.0, 0.0], [5.0, 5.0]])
    posterior = knn_label_posterior(query, reference, labels, 3, k=6)
    np.testing.assert_allclose(posterior[0], np.array([5.5, 1.5, 0.5]) / 7.5)
    np.testing.assert_allclose(posterior[1], np.array([0.5, 6.5, 0.5]) / 7.5)
    # Leave-self-out on the reference itself: row 0's neighbours are its 5 cluster mates (label 0) + 1 far row.
    own = knn_label_posterior(reference, reference, labels, 3, k=5, exclude_self=True)
    np.testing.assert_allclose(own[0], np.array([5.5, 0.5, 0.5]) / 6.5)


def test_knn_experts_raise_the_score_of_a_row_its_neighbours_disagree_with() -> None:
    probs_in = np.array([[0.6, 0.4], [0.6, 0.4]])
    probs_oof = np.array([[0.6, 0.4], [0.6, 0.4]])
    knn_oof = np.array([[0.9, 0.1], [0.1, 0.9]])  # row 1's out-of-fold neighbours carry label 1
    knn_main = np.array([[0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 0])
    base = combine_label_evidence(probs_in, probs_oof)
    pooled = combine_label_evidence(probs_in, probs_oof, knn_oof=knn_oof, knn_main=knn_main)
    assert pooled[1, 0] < base[1, 0] < pooled[0, 0]
    expected = np.exp(0.5 * np.log([0.6, 0.4]) * 2 + 0.5 * np.log([0.1, 0.9]) + 0.25 * np.log([0.1, 0.9]))
    np.testing.assert_allclose(pooled[1], expected / expected.sum())
    assert LabelIssueDetector(min_reliability=0).fit(pooled, labels).is_label_issue_.tolist() == [False, True]
    # rows without out-of-fold kNN (NaN) keep the rest of the pool
    knn_oof[0] = np.nan
    partial = combine_label_evidence(probs_in, probs_oof, knn_oof=knn_oof)
    np.testing.assert_allclose(partial[0], base[0])


def test_harmful_detector_flags_only_high_positive_outliers() -> None:
    rng = np.random.default_rng(0)
    harm = rng.normal(0, 1, 500)
    harm[:5] = 20.0
    harm[5:10] = -20.0
    harm[10] = np.nan
    flags = HarmfulDetector().fit(harm).is_harmful_
    assert flags[:5].all()
    assert not flags[5:11].any()
    assert flags.sum() < 15
