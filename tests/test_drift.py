"""One-step drifts of Q_l (tensam.metrics.drift) against Theorem 5 and Algorithm 2, on the
two-layer float64 Tucker toy: SAM and DAS-global drift each layer by 4 eta rho u_D K_l Cov_l,
DAS-layer by sqrt(sum_l K_l gbar_l / (K_l gbar_l)) times that."""

import torch
from toys import TwoTucker, closure_for

from tensam.cores import core_groups
from tensam.metrics.drift import one_step_drifts
from tensam.optim import DAS, SAM, WrappedOptimizer

LR, RHO = 1e-7, 1e-4


def _methods():
    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=LR)

    return {
        "sgd": lambda m: WrappedOptimizer(sgd(m)),
        "sam": lambda m: SAM(sgd(m), rho=RHO),
        "das_global": lambda m: DAS(sgd(m), core_groups(m), alpha=RHO, normalization="global"),
        "das_layer": lambda m: DAS(sgd(m), core_groups(m), alpha=RHO, normalization="layer"),
    }


def test_drifts_follow_theorem5_and_leave_the_model_as_it_was():
    model = TwoTucker(std=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = one_step_drifts(model, closure_for(model), _methods())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    u_d = d["layer_sq_grad"].sum().rsqrt()
    predicted = 4 * LR * RHO * u_d * d["K"] * d["cov"]
    assert (predicted.abs() > 1e-14).all()
    for method in ("sam", "das_global"):
        torch.testing.assert_close(d[method] - d["sgd"], predicted, rtol=2e-3, atol=0)
    ratio = (d["layer_sq_grad"].sum() / d["layer_sq_grad"]).sqrt()
    assert (ratio > 1).all() and ratio.max() > 5  # u_l > u_D, far larger in the small layer
    torch.testing.assert_close(d["das_layer"] - d["sgd"], predicted * ratio, rtol=2e-3, atol=0)


def test_gradients_at_w_are_left_on_the_model():
    model = TwoTucker()
    d = one_step_drifts(model, closure_for(model), {"sgd": _methods()["sgd"]})
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)
    assert d["loss"] == model().detach()
