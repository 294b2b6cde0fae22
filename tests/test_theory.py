"""Theorems 1, 3 and 5 checked numerically on a small float64 Tucker regression.

Theorem 1: under gradient flow ||G_i||^2 - ||G_j||^2 is conserved; one SGD step changes it by
exactly lr^2 (||g_i||^2 - ||g_j||^2), because <G_k, g_k> is the same for every core (the
reconstruction is linear in each core). Theorem 3: SAM drifts Q at the rate
dQ/dt = 4 rho u K Cov(||G_k||^2, ||g_k||^2) + O(rho^2). Theorem 5: DAS reproduces that drift
explicitly with alpha in place of rho and u = u_D.
"""

import pytest
import torch
from torch import nn
from toys import backward, closure_for

from tensam.cores import core_groups
from tensam.metrics.norm_dynamics import covariance, norm_deviation, norm_dynamics
from tensam.norms import CoreIndex
from tensam.optim import DAS, SAM
from tensam.tensorized import Tucker


class Regression(nn.Module):
    """Mean squared error of a (6, 5, 4) Tucker model of rank (3, 3, 2) to a random target."""

    def __init__(self):
        super().__init__()
        self.tucker = Tucker((6, 5, 4), (3, 3, 2), init="normal", seed=1, std=0.7,
                             dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("target", torch.randn(6, 5, 4, generator=gen, dtype=torch.float64))

    def forward(self):
        return (self.tucker() - self.target).square().mean()


def _state():
    model = Regression()
    return model, CoreIndex(core_groups(model))


def _sgd_steps(lr, steps):
    model, index = _state()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x0 = index.core_sq_norms()
    for _ in range(steps):
        backward(model)
        opt.step()
    x1 = index.core_sq_norms()
    drift = ((x1[:, None] - x1[None, :]) - (x0[:, None] - x0[None, :])).abs().max().item()
    return drift, (x1 - x0).abs().min().item()


def test_inner_product_with_the_gradient_is_the_same_for_every_core():
    model, index = _state()
    backward(model)
    inner = torch.stack([(c.detach() * c.grad).sum() for c in index.cores])
    assert inner.abs().min() > 1e-3
    torch.testing.assert_close(inner, inner[0].expand(len(inner)), rtol=1e-12, atol=0)


def test_theorem1_one_sgd_step_changes_differences_by_exactly_lr_squared():
    model, index = _state()
    lr = 1e-3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    backward(model)
    x0, y = index.core_sq_norms(), index.grad_sq_norms()
    opt.step()
    x1 = index.core_sq_norms()
    drift = (x1[:, None] - x1[None, :]) - (x0[:, None] - x0[None, :])
    expected = lr**2 * (y[:, None] - y[None, :])
    assert expected.abs().max() > 1e-6
    torch.testing.assert_close(drift, expected, rtol=1e-6, atol=1e-15)


def test_theorem1_drift_over_several_steps_is_quadratic_in_lr():
    drifts, moves = zip(*(_sgd_steps(lr, steps=5) for lr in (1e-3, 5e-4, 2.5e-4)), strict=True)
    assert 3.6 < drifts[0] / drifts[1] < 4.4
    assert 3.6 < drifts[1] / drifts[2] < 4.4
    # every ||G_k||^2 itself moves at O(lr), twice as much for twice the lr; the differences don't
    assert 1.8 < moves[0] / moves[1] < 2.2 and 1.8 < moves[1] / moves[2] < 2.2
    assert drifts[2] < 0.01 * moves[2]


def _measured_rate(make_optimizer, lr):
    """(Q(t+1) - Q(t)) / lr for one step, and the Theorem 3 quantities at t."""
    model, index = _state()
    opt = make_optimizer(model, lr)
    backward(model)
    x, y = index.core_sq_norms(), index.grad_sq_norms()
    dynamics = norm_dynamics(index)
    q0 = norm_deviation(x)
    opt.step(closure_for(model)) if isinstance(opt, SAM) else opt.step()
    rate = (norm_deviation(index.core_sq_norms()) - q0).item() / lr
    cov = covariance(x, y).item()
    u = y.sum().rsqrt().item()
    return rate, 4 * u * len(x) * cov, dynamics


def _sam(rho):
    return lambda model, lr: SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho)


def test_theorem3_sam_drift_matches_covariance_term():
    lr = 1e-8
    errors = []
    for rho in (1e-2, 1e-3):
        rate, per_rho, dynamics = _measured_rate(_sam(rho), lr)
        predicted = rho * per_rho
        assert abs(predicted) > 1e-2 * rho  # a non-degenerate covariance
        assert dynamics["norm/sam_drift"] == pytest.approx(per_rho, rel=1e-12)
        errors.append(abs(rate - predicted) / abs(predicted))
    assert errors[1] < errors[0] / 4  # the O(rho^2) remainder shrinks with rho
    assert errors[1] < 5e-3


def test_plain_sgd_has_no_first_order_q_drift():
    sgd = lambda model, lr: torch.optim.SGD(model.parameters(), lr=lr)  # noqa: E731
    rate, per_rho, _ = _measured_rate(sgd, 1e-8)
    assert abs(rate) < 1e-3 * abs(1e-3 * per_rho)


@pytest.mark.parametrize("alpha", [1e-2, 1e-3])
def test_theorem5_das_reproduces_the_sam_drift(alpha):
    """DAS (u_D normalisation) drifts Q at 4 alpha u_D K Cov with no O(alpha^2) remainder."""

    def das(model, lr):
        return DAS(torch.optim.SGD(model.parameters(), lr=lr), core_groups(model), alpha=alpha,
                   normalization="global")

    rate, per_alpha, _ = _measured_rate(das, 1e-8)
    assert rate == pytest.approx(alpha * per_alpha, rel=2e-3)
