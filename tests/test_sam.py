"""SAM (Algorithm 1) and ASAM against the two-pass definition computed by hand in float64."""

import pytest
import torch
from toys import TwoTucker, backward, closure_for, grad_at, loss_at, make_optimizer, values

from tensam.optim import SAM

TOL = {"rtol": 1e-11, "atol": 1e-13}


def _global_norm(tensors):
    return sum(float(t.square().sum()) for t in tensors) ** 0.5


def _assert_params(model, expected):
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, **TOL)


def _sam_point(model, w, rho, perturbed=None):
    """w_adv = w + rho g / ||g||, the norm over the perturbed parameters only."""
    g = grad_at(model, w)
    chosen = perturbed if perturbed is not None else [True] * len(w)
    norm = _global_norm([gi for gi, c in zip(g, chosen, strict=True) if c])
    return [wi + rho * gi / norm if c else wi for wi, gi, c in zip(w, g, chosen, strict=True)]


def test_sgd_base_step_equals_two_pass_definition():
    model, lr, rho = TwoTucker(), 0.05, 0.3
    sam = SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho)
    for _ in range(3):
        w = values(model)
        w_adv = _sam_point(model, w, rho)
        g_adv = grad_at(model, w_adv)
        loss = sam.step(closure_for(model))
        _assert_params(model, [wi - lr * gi for wi, gi in zip(w, g_adv, strict=True)])
        # step returns the loss of the closure's first call, at w (torch's contract)
        assert loss.item() == pytest.approx(loss_at(model, w).item(), rel=1e-12)


@pytest.mark.parametrize("adam", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_base_step_equals_adam_fed_the_perturbed_gradient(adam):
    model, rho = TwoTucker(seed=3), 0.1
    hyper = {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01}
    sam = SAM(adam(model.parameters(), **hyper), rho=rho)
    reference = [v.requires_grad_(True) for v in values(model)]
    ref_opt = adam(reference, **hyper)
    for _ in range(4):
        w = values(model)
        g_adv = grad_at(model, _sam_point(model, w, rho))
        for r, g in zip(reference, g_adv, strict=True):
            r.grad = g
        ref_opt.step()
        backward(model)
        sam.step(closure_for(model))
        _assert_params(model, [r.detach() for r in reference])


def test_perturbing_cores_only_leaves_other_parameters_at_w():
    model, lr, rho = TwoTucker(seed=1), 0.05, 0.2
    names = [n for n, _ in model.named_parameters()]
    is_core = [n != "bias" for n in names]
    sam = make_optimizer({"method": "sam", "rho": rho, "perturb": "cores",
                           "base": {"name": "sgd", "lr": lr}}, model)
    w = values(model)
    w_adv = _sam_point(model, w, rho, perturbed=is_core)
    seen = []

    def closure():
        seen.append(values(model))
        return closure_for(model)()

    sam.step(closure)
    assert len(seen) == 2 and all(torch.equal(s, wi) for s, wi in zip(seen[0], w, strict=True))
    for name, s, wa, wi in zip(names, seen[1], w_adv, w, strict=True):
        torch.testing.assert_close(s, wa, **TOL)
        assert torch.equal(s, wi) == (name == "bias")
    g_adv = grad_at(model, w_adv)
    assert g_adv[names.index("bias")].abs().sum() > 0  # the bias still steps, with g(w_adv)
    _assert_params(model, [wi - lr * gi for wi, gi in zip(w, g_adv, strict=True)])


def test_parameters_are_restored_bitwise_before_the_base_step():
    """lr = 0: the base step is a no-op, so the parameters must come back bit for bit."""
    model = TwoTucker(seed=2, dtype=torch.float32)
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.7)
    w = values(model)
    seen = []

    def closure():
        seen.append(values(model))
        return closure_for(model)()

    for _ in range(3):
        sam.step(closure)
        assert all(torch.equal(p.detach(), wi) for p, wi in zip(model.parameters(), w, strict=True))
    assert all(not torch.equal(s, wi) for s, wi in zip(seen[1], w, strict=True))
    # undoing the perturbation arithmetically (w + e - e) would not be exact in float32
    assert any(not torch.equal((s - wi) + wi, s) or not torch.equal(s - (s - wi), wi)
               for s, wi in zip(seen[1], w, strict=True))


def test_asam_perturbation_equals_definition():
    """ASAM: e = rho T^2 g / ||T g||, T = |w| + eta elementwise, norm over all parameters."""
    model, lr, rho, eta = TwoTucker(seed=4), 0.02, 0.5, 0.01
    sam = SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, adaptive=True, eta=eta)
    for _ in range(2):
        w = values(model)
        g = grad_at(model, w)
        T = [wi.abs() + eta for wi in w]
        norm = _global_norm([t * gi for t, gi in zip(T, g, strict=True)])
        w_adv = [wi + rho * t * t * gi / norm for wi, t, gi in zip(w, T, g, strict=True)]
        g_adv = grad_at(model, w_adv)
        sam.step(closure_for(model))
        _assert_params(model, [wi - lr * gi for wi, gi in zip(w, g_adv, strict=True)])


def test_step_without_closure_raises():
    model = TwoTucker()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    backward(model)
    with pytest.raises(RuntimeError, match="closure"):
        sam.step()


@pytest.mark.parametrize("rho", [0.0, -0.05])
def test_non_positive_rho_raises(rho):
    model = TwoTucker()
    with pytest.raises(ValueError, match=r"rho must be > 0"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho)


def test_negative_asam_eta_raises():
    model = TwoTucker()
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), adaptive=True, eta=-1.0)
