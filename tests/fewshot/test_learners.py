"""ProtoNet and MAML as functions of a flat parameter vector: known answers, weights, gradients, Conv-4 backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.fewshot.backbones import Conv4Backbone, MLPBackbone
from auditor.fewshot.influence import hessian_vector_product, task_gradient
from auditor.fewshot.learners import MAML, ProtoNet, TaskBatch, drop_support


def _task(seed: int = 0, *, ways: int = 3, shots: int = 2, queries: int = 3, dim: int = 4) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    return TaskBatch(
        support_x=torch.randn(ways * shots, dim, generator=gen, dtype=torch.float64),
        support_y=torch.arange(ways).repeat_interleave(shots),
        query_x=torch.randn(ways * queries, dim, generator=gen, dtype=torch.float64),
        query_y=torch.arange(ways).repeat_interleave(queries),
        ways=ways,
    )


def _identity_params(dim: int) -> torch.Tensor:
    return torch.cat([torch.eye(dim, dtype=torch.float64).reshape(-1), torch.zeros(dim, dtype=torch.float64)])


def test_protonet_loss_matches_a_hand_computed_prototype_classifier() -> None:
    task = _task()
    learner = ProtoNet(MLPBackbone(4, 4))
    support, query = task.support_x.numpy(), task.query_x.numpy()
    prototypes = np.stack([support[task.support_y.numpy() == k].mean(0) for k in range(3)])
    logits = -((query[:, None, :] - prototypes[None]) ** 2).sum(-1)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_probs[np.arange(9), task.query_y.numpy()].mean()
    assert float(learner.task_loss(_identity_params(4), task)) == pytest.approx(expected, rel=1e-12)


def test_zero_support_weight_is_removing_the_image() -> None:
    task = _task()
    learner = ProtoNet(MLPBackbone(4, 4))
    params = learner.backbone.init_params(0, dtype=torch.float64)
    weights = torch.ones(6, dtype=torch.float64)
    weights[4] = 0.0
    removed = learner.task_loss(params, drop_support(task, 4))
    assert float(learner.task_loss(params, task, weights)) == pytest.approx(float(removed), rel=1e-12)


def test_dropping_a_one_shot_support_image_drops_its_class() -> None:
    task = _task(shots=1)
    smaller = drop_support(task, 1)
    assert smaller.support_y.tolist() == [0, 2]
    assert 1 not in smaller.query_y.tolist()
    assert len(smaller.query_y) == 6
    learner = ProtoNet(MLPBackbone(4, 4))
    grad = task_gradient(learner, learner.backbone.init_params(0, dtype=torch.float64), smaller)
    assert torch.isfinite(grad).all()


def test_second_order_maml_gradient_matches_finite_differences() -> None:
    task = _task()
    learner = MAML(MLPBackbone(4, 3, hidden=(5,)), inner_lr=0.4, inner_steps=2, second_order=True)
    params = learner.backbone.init_params(1, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: learner.task_loss(p, task), (params,))


def test_first_order_maml_gradient_is_the_query_gradient_at_the_adapted_parameters() -> None:
    task = _task()
    first = MAML(MLPBackbone(4, 3), inner_lr=0.4, inner_steps=2, second_order=False)
    second = MAML(MLPBackbone(4, 3), inner_lr=0.4, inner_steps=2, second_order=True)
    params = first.backbone.init_params(2, dtype=torch.float64)
    adapted = first.adapt(params, task).detach().requires_grad_(True)
    query_loss = torch.nn.functional.cross_entropy(first.backbone(adapted, task.query_x), task.query_y)
    (expected,) = torch.autograd.grad(query_loss, adapted)
    torch.testing.assert_close(task_gradient(first, params, task), expected)
    assert not torch.allclose(task_gradient(second, params, task), expected)


def test_conv4_backbone_hessian_vector_product_matches_finite_differences() -> None:
    """Second-order MAML through the functional Conv-4 needs third derivatives of batch norm (torch's fused op has
    none). Finite differences need a small step: ReLU and max-pool kinks are crossed at 1e-3."""
    gen = torch.Generator().manual_seed(0)
    tasks = [
        TaskBatch(
            support_x=torch.randn(12, 1, 16, 16, generator=gen, dtype=torch.float64),
            support_y=torch.arange(3).repeat_interleave(4),
            query_x=torch.randn(12, 1, 16, 16, generator=gen, dtype=torch.float64),
            query_y=torch.arange(3).repeat_interleave(4),
            ways=3,
        )
        for _ in range(2)
    ]
    learner = MAML(Conv4Backbone(1, image_size=16, out_features=3, width=4), inner_lr=0.1, inner_steps=1)
    params = learner.backbone.init_params(0, dtype=torch.float64)
    assert learner.backbone(params, tasks[0].query_x).shape == (12, 3)
    embedder = Conv4Backbone(1, image_size=16, out_features=None, width=4)
    assert embedder(embedder.init_params(0, dtype=torch.float64), tasks[0].query_x).shape == (12, 4)
    vector = torch.randn(params.shape, generator=gen, dtype=torch.float64)
    vector /= vector.norm()
    hv = hessian_vector_product(learner, params, tasks, vector, weight_decay=0.0)

    def mean_grad(p: torch.Tensor) -> torch.Tensor:
        return (task_gradient(learner, p, tasks[0]) + task_gradient(learner, p, tasks[1])) / 2

    eps = 1e-6
    finite = (mean_grad(params + eps * vector) - mean_grad(params - eps * vector)) / (2 * eps)
    assert float((hv - finite).norm() / finite.norm()) < 1e-6


def test_zero_head_maml_starts_with_a_zero_head_and_an_unchanged_body() -> None:
    backbone = Conv4Backbone(1, image_size=16, out_features=5, width=8)
    plain = MAML(backbone, inner_lr=0.4, inner_steps=1).init_params(3)
    zeroed = MAML(backbone, inner_lr=0.4, inner_steps=1, zero_head=True).init_params(3)
    mask = backbone.head_mask()
    assert int(mask.sum()) == 8 * 5 + 5  # the Linear(width -> ways) weight and bias
    assert bool((zeroed[mask] == 0).all())
    assert bool((plain[mask] != 0).any())
    torch.testing.assert_close(zeroed[~mask], plain[~mask])
    x = torch.randn(4, 1, 16, 16)
    assert bool((backbone(zeroed, x) == 0).all())  # every way starts equally likely
    assert int(Conv4Backbone(1, image_size=16, out_features=None, width=8).head_mask().sum()) == 0
