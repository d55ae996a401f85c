"""Meta-learners as pure functions of a flat meta-parameter vector: the per-task query loss (the quantity the
meta-objective averages and the influence functions differentiate) and the adapted query logits.

`ProtoNet` (Snell et al. 2017): closed-form class prototypes, squared-Euclidean logits; cost one forward per task.
`MAML` (Finn et al. 2017): `inner_steps` SGD steps on the support loss, then the query loss. Second order keeps the
adaptation in the graph (create_graph); first order treats the adaptation as a constant offset of theta, so its
gradient is the FOMAML gradient and its Hessian the query-loss Hessian at the adapted parameters.
Per-sample weights (default 1; normalised, so weight 0 is removal) let the influence code differentiate with
respect to one image of a task; `drop_support` removes a support image for real.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from auditor.fewshot.backbones import FunctionalBackbone
from auditor.fewshot.episodes import TaskSet


@dataclass(frozen=True)
class TaskBatch:
    """The tensors of one task: support/query inputs and local labels in 0..ways-1."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int


def materialize_tasks(tasks: TaskSet, pixels: torch.Tensor) -> list[TaskBatch]:
    """Gather each task's inputs from `pixels` (rows aligned with the samples table the tasks index)."""
    out = []
    for t in range(len(tasks)):
        out.append(
            TaskBatch(
                support_x=pixels[torch.from_numpy(tasks.support_rows[t])],
                support_y=torch.from_numpy(np.ascontiguousarray(tasks.support_labels[t])),
                query_x=pixels[torch.from_numpy(tasks.query_rows[t])],
                query_y=torch.from_numpy(np.ascontiguousarray(tasks.query_labels[t])),
                ways=tasks.ways,
            )
        )
    return out


def drop_support(task: TaskBatch, index: int) -> TaskBatch:
    """The task without support image `index`. If that leaves its class with no support image (1-shot), the class's
    queries go too: a class that was never shown cannot be asked about (the task becomes (N-1)-way)."""
    keep = torch.arange(len(task.support_y)) != index
    label = task.support_y[index]
    smaller = replace(task, support_x=task.support_x[keep], support_y=task.support_y[keep])
    if bool((smaller.support_y == label).any()):
        return smaller
    keep_query = task.query_y != label
    return replace(smaller, query_x=task.query_x[keep_query], query_y=task.query_y[keep_query])


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum_i w_i CE_i / sum_i w_i: at w = 1 the plain mean, and w_i = 0 is exactly dropping sample i, so the
    derivative in w_i linearises "remove this image from its task" (it is (CE_i - mean CE) / n)."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


class MetaLearner(ABC):
    """A few-shot learner over a functional backbone; parameters are always one flat tensor."""

    name: ClassVar[str]

    def __init__(self, backbone: FunctionalBackbone) -> None:
        self.backbone = backbone

    @abstractmethod
    def adapted_logits(
        self, params: torch.Tensor, task: TaskBatch, support_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Query logits after adapting to the (weighted) support set, differentiable in `params` and the weights."""

    def task_loss(
        self,
        params: torch.Tensor,
        task: TaskBatch,
        support_weights: torch.Tensor | None = None,
        query_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Query loss after adapting to the support set: a scalar differentiable in `params` and the weights."""
        return weighted_cross_entropy(self.adapted_logits(params, task, support_weights), task.query_y, query_weights)

    @abstractmethod
    def query_logits(self, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
        """Adapted logits for the query set (no graph kept to `params`)."""

    def init_params(self, seed: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The meta-parameters training starts from: the backbone's seeded initialisation."""
        return self.backbone.init_params(seed, dtype=dtype)

    def embed(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The meta-learned features of `x`: the backbone without its per-way head."""
        return self.backbone.embed(params, x)


class ProtoNet(MetaLearner):
    """Prototypical network: prototypes are (weighted) class means of the embedded support images, logits the
    negative squared Euclidean distances of the embedded queries to them."""

    name: ClassVar[str] = "protonet"

    def adapted_logits(
        self, params: torch.Tensor, task: TaskBatch, support_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        n_support = len(task.support_y)
        # One forward for support and query: transductive batch statistics, as ProtoNet is usually run.
        embedded = self.backbone(params, torch.cat([task.support_x, task.query_x]))
        support, query = embedded[:n_support], embedded[n_support:]
        membership = F.one_hot(task.support_y, task.ways).to(embedded.dtype)
        if support_weights is not None:
            membership = membership * support_weights[:, None]
        counts = membership.sum(0)
        prototypes = (membership.T @ support) / counts.clamp_min(torch.finfo(counts.dtype).tiny)[:, None]
        logits = -_squared_distances(query, prototypes)
        # A class with no support image (see drop_support) has no prototype: it can never be predicted.
        return logits.masked_fill((counts == 0)[None, :], float("-inf"))

    def query_logits(self, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return self.adapted_logits(params, task)

    def embed(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The whole backbone is the embedding the prototypes live in."""
        return self.backbone(params, x)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 by broadcasting: smooth everywhere (cdist's sqrt is not at 0), fine for small ways."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


class MAML(MetaLearner):
    """Model-agnostic meta-learning with a backbone whose output has one logit per way."""

    name: ClassVar[str] = "maml"

    def __init__(
        self,
        backbone: FunctionalBackbone,
        *,
        inner_lr: float,
        inner_steps: int,
        second_order: bool = True,
        zero_head: bool = False,
    ) -> None:
        super().__init__(backbone)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.second_order = second_order
        self.zero_head = zero_head

    def init_params(self, seed: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The backbone's initialisation, with the per-way head set to zero if `zero_head`. Labels are assigned
        to ways at random in every task, so no initial head row can favour a class; a zero head makes the first
        inner step write each way's row from its support features alone (a prototype-like classifier), which
        trains much faster than a random head (Ye & Chao, "How to train your MAML to excel in few-shot
        classification", ICLR 2022)."""
        params = super().init_params(seed, dtype=dtype)
        if self.zero_head:
            params = params.masked_fill(self.backbone.head_mask(), 0.0)
        return params

    def adapt(self, params: torch.Tensor, task: TaskBatch, support_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Task parameters after the inner SGD steps. Second order: differentiable in `params` (and weights).
        First order: theta + delta with delta constant in theta, but differentiable in the weights if they
        require grad (instance influence needs d(adapted)/dw even for first-order MAML)."""
        weights_need_graph = support_weights is not None and support_weights.requires_grad
        through_params = self.second_order and params.requires_grad
        start = params if through_params else params.detach().requires_grad_(True)
        keep_graph = through_params or weights_need_graph
        fast = start
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                loss = weighted_cross_entropy(self.backbone(fast, task.support_x), task.support_y, support_weights)
                (grad,) = torch.autograd.grad(loss, fast, create_graph=keep_graph)
                fast = fast - self.inner_lr * grad
        if through_params:
            return fast
        delta = fast - start
        return params + (delta if weights_need_graph else delta.detach())

    def adapted_logits(
        self, params: torch.Tensor, task: TaskBatch, support_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.backbone(self.adapt(params, task, support_weights), task.query_x)

    def query_logits(self, params: torch.Tensor, task: TaskBatch) -> torch.Tensor:
        adapted = self.adapt(params.detach(), task).detach()
        with torch.no_grad():
            return self.backbone(adapted, task.query_x)
