"""Inverse-Hessian-vector products against a dense Hessian from torch.func.hessian (exact oracle)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from auditor.errors import ConfigError
from auditor.influence.evaluate import ConvexProblem
from auditor.influence.ihvp import IHVPSettings, fit_inverse_hvp, inverse_hvp
from auditor.influence.objective import Objective, cross_entropy_losses
from auditor.models.architectures import Conv4
from auditor.models.train import to_float


def _dense_hessian(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hessian of the mean cross-entropy over the named parameters, straight from torch.func."""
    params = dict(model.named_parameters())
    shapes = [params[name].shape for name in names]
    sizes = [params[name].numel() for name in names]

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = {n: p.view(s) for n, p, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return nn.functional.cross_entropy(functional_call(model, pieces, (x,)), y)

    flat = torch.cat([params[name].detach().reshape(-1) for name in names])
    return hessian(mean_loss)(flat)


def _mlp_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    return model, torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 4, (30,))


@pytest.fixture(scope="module")
def trained_head(convex_problem: ConvexProblem) -> tuple[Objective, torch.Tensor]:
    """The fitted logistic-regression head as an Objective, and its dense Hessian."""
    head = convex_problem.fit().to_linear()
    x = torch.from_numpy(convex_problem.train_features)
    y = torch.from_numpy(convex_problem.train_labels)
    return Objective(head, x, y, batch_size=16), _dense_hessian(head, ["weight", "bias"], x, y)


@pytest.mark.parametrize("params", [["2.weight", "2.bias"], ["0.weight", "2.bias"]])
def test_hessian_of_parameter_subset_matches_torch_func(params: list[str]) -> None:
    model, x, y = _mlp_and_data()
    objective = Objective(model, x, y, params=params, batch_size=7)
    torch.testing.assert_close(objective.hessian(), _dense_hessian(model, params, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "cg"])
def test_exact_and_cg_solve_the_damped_system(method: str) -> None:
    model, x, y = _mlp_and_data(1)
    torch.manual_seed(1)
    params = ["0.weight", "2.weight", "2.bias"]
    dense = _dense_hessian(model, params, x, y)
    vectors = torch.randn(len(dense), 3, dtype=torch.float64)
    damping = 1.0  # above the most negative eigenvalue of this non-convex (tanh) subset
    expected = torch.linalg.solve(dense + damping * torch.eye(len(dense), dtype=torch.float64), vectors)
    options = {"cg_tol": 1e-12} if method == "cg" else {}
    got = inverse_hvp(
        model, params, cross_entropy_losses, (x, y), vectors, method=method, damping=damping, batch_size=8, **options
    )  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_quadratic_form_is_vector_times_solve(trained_head: tuple[Objective, torch.Tensor]) -> None:
    objective, dense = trained_head
    torch.manual_seed(1)
    rows = torch.randn(5, objective.n_params, dtype=torch.float64)
    damped = dense + 0.01 * torch.eye(len(dense), dtype=torch.float64)
    expected = torch.einsum("bp,pb->b", rows, torch.linalg.solve(damped, rows.T))
    for method in ("exact", "cg", "ekfac"):
        solver = fit_inverse_hvp(objective, IHVPSettings(method=method, damping=0.01))
        torch.testing.assert_close(solver.quadratic_form(rows), torch.einsum("bp,pb->b", rows, solver.solve(rows.T)))
    exact = fit_inverse_hvp(objective, IHVPSettings(method="exact", damping=0.01))
    torch.testing.assert_close(exact.quadratic_form(rows), expected, rtol=1e-10, atol=1e-12)


def test_lissa_approaches_exact(trained_head: tuple[Objective, torch.Tensor]) -> None:
    objective, dense = trained_head
    torch.manual_seed(3)
    vectors = torch.randn(objective.n_params, 2, dtype=torch.float64)
    expected = torch.linalg.solve(dense + 0.05 * torch.eye(len(dense), dtype=torch.float64), vectors)
    solver = fit_inverse_hvp(objective, IHVPSettings(method="lissa", damping=0.05, lissa_batch_size=16, seed=3))
    error = float((solver.solve(vectors) - expected).norm() / expected.norm())
    assert error < 0.06  # measured 0.012-0.029 over seeds 0-4: batch Hessians of 16 of the 40 rows are noisy


def test_ekfac_is_exact_when_the_fisher_factorises() -> None:
    # Zero weights: every row has the same softmax p, so H = (diag p - p p^T) kron E[a a^T] exactly.
    torch.manual_seed(0)
    head = nn.Linear(4, 3).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    x, y = torch.randn(25, 4, dtype=torch.float64), torch.randint(0, 3, (25,))
    objective = Objective(head, x, y, batch_size=10)
    dense = _dense_hessian(head, ["weight", "bias"], x, y)
    vectors = torch.randn(objective.n_params, 4, dtype=torch.float64)
    expected = torch.linalg.solve(dense + 0.1 * torch.eye(len(dense), dtype=torch.float64), vectors)
    solver = fit_inverse_hvp(objective, IHVPSettings(method="ekfac", damping=0.1))
    torch.testing.assert_close(solver.solve(vectors), expected, rtol=1e-9, atol=1e-11)


def test_ekfac_approximates_exact_on_a_trained_head(trained_head: tuple[Objective, torch.Tensor]) -> None:
    objective, dense = trained_head
    torch.manual_seed(0)
    vectors = torch.randn(objective.n_params, 8, dtype=torch.float64)
    expected = torch.linalg.solve(dense + 0.01 * torch.eye(len(dense), dtype=torch.float64), vectors)
    for fisher in ("expected", "sampled"):
        solver = fit_inverse_hvp(objective, IHVPSettings(method="ekfac", damping=0.01, ekfac_fisher=fisher))
        cosine = nn.functional.cosine_similarity(solver.solve(vectors), expected, dim=0)
        assert float(cosine.min()) > 0.95, fisher  # measured minimum 0.982-0.997 over seeds 0-4


def test_ekfac_refuses_parameters_outside_linear_layers() -> None:
    model = Conv4(1, 3, image_size=8, width=4).double()
    pixels = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    objective = Objective(model, pixels, torch.tensor([0, 1, 2, 0, 1, 2]), prepare=lambda p: to_float(p).double())
    with pytest.raises(ConfigError, match=r"nn\.Linear"):
        fit_inverse_hvp(objective, IHVPSettings(method="ekfac", damping=0.1))


def test_per_sample_grads_of_a_subset_match_autograd() -> None:
    model, x, y = _mlp_and_data(2)
    params = ["0.weight", "2.bias"]
    objective = Objective(model, x, y, params=params)
    named = dict(model.named_parameters())
    for rows, grads, losses in objective.iter_grads(x, y, batch_size=8):
        for offset, i in enumerate(range(rows.start, rows.stop)):
            loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [named[p] for p in params])])
            torch.testing.assert_close(grads[offset], expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(losses[offset], loss.detach(), rtol=1e-12, atol=1e-12)


def test_whole_conv4_on_pixels_takes_the_gradients_module_with_the_same_result() -> None:
    torch.manual_seed(0)
    model = Conv4(1, 3, image_size=8, width=4)
    pixels = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    fast = Objective(model, pixels, targets, prepare=to_float)
    names = [name for name, _ in model.named_parameters()]
    plain = Objective(model, pixels, targets, params=names, prepare=to_float)  # explicit names: the vmap path
    assert fast._uses_gradients_module
    assert not plain._uses_gradients_module
    (_, fast_grads, _), (_, plain_grads, _) = (
        next(fast.iter_grads(pixels, targets)),
        next(plain.iter_grads(pixels, targets)),
    )
    torch.testing.assert_close(fast_grads, plain_grads, rtol=1e-4, atol=1e-6)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        IHVPSettings(method="newton")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="damping"):
        IHVPSettings(method="lissa", damping=0.0)


def test_ekfac_is_block_diagonal_across_linear_layers() -> None:
    model, x, y = _mlp_and_data(3)
    both = Objective(model, x, y)
    last = Objective(model, x, y, params=["2.weight", "2.bias"])
    settings = IHVPSettings(method="ekfac", damping=0.1)
    torch.manual_seed(0)
    vector = torch.zeros(both.n_params, dtype=torch.float64)
    first_layer = 3 * 5 + 5
    vector[first_layer:] = torch.randn(both.n_params - first_layer, dtype=torch.float64)
    solved = fit_inverse_hvp(both, settings).solve(vector)
    torch.testing.assert_close(solved[:first_layer], torch.zeros(first_layer, dtype=torch.float64))
    torch.testing.assert_close(solved[first_layer:], fit_inverse_hvp(last, settings).solve(vector[first_layer:]))


@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_head_of_a_conv4_equals_a_linear_model_on_its_embeddings(method: str) -> None:
    torch.manual_seed(0)
    model = Conv4(1, 3, image_size=8, width=4).double()
    model.eval()
    pixels = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    targets = torch.randint(0, 3, (12,))
    through_network = Objective(
        model, pixels, targets, params=["head.weight", "head.bias"], prepare=lambda p: to_float(p).double()
    )
    with torch.no_grad():
        features = model.embed(to_float(pixels).double())
    on_features = Objective(model.head, features, targets)
    settings = IHVPSettings(method=method, damping=0.05)
    vectors = torch.randn(on_features.n_params, 2, dtype=torch.float64)
    torch.testing.assert_close(
        fit_inverse_hvp(through_network, settings).solve(vectors), fit_inverse_hvp(on_features, settings).solve(vectors)
    )
