"""nBAR / oBAR: first steps equal Algorithms 2 and 3 by hand, K != 2 raises, configs build."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from tensam.cores import CoreGroup
from tensam.optim import NBAR, OBAR, build_optimizer
from tensam.tensorized import Tucker
from tensam.train import CONFIG_DIR

CONFIGS = CONFIG_DIR


class Factorization(nn.Module):
    """W = X Y^T: one two-core group (x, y) = (X, Y), as a LoRA pair."""

    def __init__(self, n: int, m: int, r: int, scale_x: float, scale_y: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.X = nn.Parameter(scale_x * torch.randn(n, r, generator=gen, dtype=torch.float64))
        self.Y = nn.Parameter(scale_y * torch.randn(m, r, generator=gen, dtype=torch.float64))

    def cores(self):
        return (self.X, self.Y)

    def forward(self):
        return self.X @ self.Y.T


def two_layer_model():
    """Two groups, unbalanced in opposite directions so both branches of line 4 are taken."""
    return nn.ModuleDict({"a": Factorization(6, 4, 2, 2.0, 0.5, 0),
                          "b": Factorization(5, 7, 3, 0.3, 1.5, 1)})


def loss_fn(model):
    return sum(((layer() - 1.0) ** 2).sum() for layer in model.values())


def alpha_at(alpha, schedule, t, total):
    if schedule == "constant":
        return alpha
    if schedule == "linear":
        return alpha * (1 - t / total)
    return alpha * 0.5 * (1 + math.cos(math.pi * t / total))


def hand_step(pairs, grads, alpha_t, lr, method):
    """Algorithm 2 (nbar) / 3 (obar), lines 4-11, with plain SGD as the optimizer update."""
    out = []
    for (x, y), (gx, gy) in zip(pairs, grads, strict=True):
        if method == "nbar":
            x_grows = gx.norm() >= gy.norm()
        else:
            x_grows = not x.norm() >= y.norm()
        s = 1.0 if x_grows else -1.0
        out.append(((1 + s * alpha_t * lr) * x - lr * gx, (1 - s * alpha_t * lr) * y - lr * gy))
    return out


@pytest.mark.parametrize("method,cls", [("nbar", NBAR), ("obar", OBAR)])
@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_first_steps_match_algorithm(method, cls, schedule):
    model = two_layer_model()
    lr, alpha, total = 0.0625, 0.5, 4  # powers of two: lr is exact in any precision
    opt = cls(torch.optim.SGD(model.parameters(), lr=lr), model, alpha=alpha,
              alpha_schedule=schedule, total_steps=total)
    pairs = [tuple(c.detach().clone() for c in layer.cores()) for layer in model.values()]
    branches = set()
    for t in range(3):
        opt.zero_grad()
        loss_fn(model).backward()
        grads = [tuple(c.grad.clone() for c in layer.cores()) for layer in model.values()]
        branches |= {bool(g[0].norm() >= g[1].norm()) if method == "nbar"
                     else bool(p[0].norm() < p[1].norm())
                     for p, g in zip(pairs, grads, strict=True)}
        pairs = hand_step(pairs, grads, alpha_at(alpha, schedule, t, total), lr, method)
        opt.step()
        for layer, expected in zip(model.values(), pairs, strict=True):
            for core, want in zip(layer.cores(), expected, strict=True):
                torch.testing.assert_close(core.detach(), want, rtol=1e-13, atol=1e-15)
    assert branches == {True, False}  # both branches of line 4 were exercised


def test_uses_current_learning_rate_with_adam():
    """eta_t is the lr as changed in place (as schedulers do); line 11 is Adam's first step."""
    model = nn.ModuleDict({"a": Factorization(4, 3, 2, 1.0, 0.2, 2)})
    opt = NBAR(torch.optim.Adam(model.parameters(), lr=0.25), model, alpha=0.5,
               alpha_schedule="constant")
    opt.param_groups[0]["lr"] = 0.125
    x, y = (c.detach().clone() for c in model["a"].cores())
    opt.zero_grad()
    loss_fn(model).backward()
    gx, gy = model["a"].X.grad.clone(), model["a"].Y.grad.clone()
    opt.step()
    lr, eps = 0.125, 1e-8
    s = 1.0 if gx.norm() >= gy.norm() else -1.0
    adam = lambda g: lr * g / (g.abs() + eps)  # noqa: E731 - Adam's bias-corrected first step
    torch.testing.assert_close(model["a"].X.detach(), (1 + s * 0.5 * lr) * x - adam(gx))
    torch.testing.assert_close(model["a"].Y.detach(), (1 - s * 0.5 * lr) * y - adam(gy))


@pytest.mark.parametrize("cls", [NBAR, OBAR])
def test_groups_with_k_not_2_raise(cls):
    tucker = Tucker((5, 4, 3), (2, 2, 2))
    with pytest.raises(ValueError, match=r"group 'Tucker' has K = 4"):
        cls(torch.optim.SGD(tucker.parameters(), lr=0.1), tucker)
    three = [torch.zeros(2, requires_grad=True) for _ in range(3)]
    with pytest.raises(ValueError, match=r"group 'g3' has K = 3"):
        cls(torch.optim.SGD(three, lr=0.1), [CoreGroup("g3", tuple(three))])


def test_rejects_bad_alpha_and_schedule():
    model = two_layer_model()
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        NBAR(torch.optim.SGD(model.parameters(), lr=0.1), model, alpha=-1.0)
    with pytest.raises(ValueError, match="needs total_steps"):
        OBAR(torch.optim.SGD(model.parameters(), lr=0.1), model, alpha_schedule="linear")


@pytest.mark.parametrize("name,cls", [("nbar", NBAR), ("obar", OBAR)])
def test_config_composes_and_builds(name, cls):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=[f"optimizer={name}"])
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert opt_cfg["_target_"] == f"tensam.optim.{name.upper()}" and opt_cfg["alpha"] == 0.5
    assert opt_cfg["alpha_schedule"] == "linear"
    model = two_layer_model()
    opt = build_optimizer(opt_cfg, model, total_steps=10)
    assert isinstance(opt, cls) and opt.total_steps == 10
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step()
    tucker = Tucker((5, 4, 3), (2, 2, 2))
    with pytest.raises(ValueError, match="K = 4"):
        build_optimizer(opt_cfg, tucker, total_steps=10)
