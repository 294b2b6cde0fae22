"""ASAM = SAM(adaptive=True): first steps by hand (Kwon et al., 2021); config composes, builds."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from tensam.optim import SAM, build_optimizer
from tensam.tasks import build_model, build_task
from tensam.train import CONFIG_DIR
from tensam.training import train_step

CONFIGS = CONFIG_DIR


def loss_at(params, x):
    W1, W2, b = params
    return (torch.tanh(x @ W1.T + b) @ W2.T).square().mean()


@pytest.mark.parametrize("perturb_bias", [True, False])
def test_first_steps_match_adaptive_perturbation(perturb_bias):
    """e = rho T^2 g / ||T g|| with T = |w| + eta over the perturbed parameters, then an SGD step
    with the gradient at w + e (Algorithm 1 with ASAM's ascent step)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (3, 4), (4,)]
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    rho, eta, lr = 0.5, 0.01, 0.1
    chosen = params if perturb_bias else params[:2]
    opt = SAM(torch.optim.SGD(params, lr=lr), rho=rho, adaptive=True, eta=eta,
              perturb=chosen)
    w = [p.detach().clone() for p in params]
    n = len(chosen)
    for _ in range(3):
        g = torch.autograd.grad(loss_at([v.requires_grad_() for v in w], x), w)
        w = [v.detach() for v in w]
        T = [v.abs() + eta for v in w[:n]]
        norm = torch.sqrt(sum(((t * gi) ** 2).sum() for t, gi in zip(T, g[:n], strict=True)))
        e = [rho * t * t * gi / norm for t, gi in zip(T, g[:n], strict=True)]
        e += [torch.zeros_like(v) for v in w[n:]]  # parameters that are not perturbed
        shifted = [(v + ei).requires_grad_() for v, ei in zip(w, e, strict=True)]
        g_tilde = torch.autograd.grad(loss_at(shifted, x), shifted)
        w = [v - lr * gt for v, gt in zip(w, g_tilde, strict=True)]

        def closure():
            opt.zero_grad()
            loss = loss_at(params, x)
            loss.backward()
            return loss

        opt.step(closure)
        for p, want in zip(params, w, strict=True):
            torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


def test_config_composes_and_builds_on_tucker_completion():
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["optimizer=asam"])
    section = lambda key: OmegaConf.to_container(cfg[key], resolve=True)  # noqa: E731
    opt_cfg = section("optimizer")
    assert opt_cfg["_target_"] == "tensam.optim.SAM" and opt_cfg["adaptive"] is True
    assert opt_cfg["rho"] == 0.5 and opt_cfg["eta"] == 0.01
    task = build_task(section("task"))
    model = build_model(section("model"), task)
    opt = build_optimizer(opt_cfg, model, total_steps=5)
    assert isinstance(opt, SAM) and opt.adaptive and opt.param_groups[0]["rho"] == 0.5
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(task, model, opt, task.batch(0))
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
