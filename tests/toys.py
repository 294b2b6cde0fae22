"""Small float64 problems shared by the optimizer and theory tests, hand-computed maths, and
the README's worked examples run as a user runs them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from tensam.optim import build_optimizer
from tensam.tensorized import Tucker

ROOT = Path(__file__).resolve().parents[1]


def train_cli(*args: str, cwd: Path = ROOT, env: dict | None = None):
    """``python train.py *args`` in a subprocess (the completed process, output captured)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})


def readme_block(language: str, needle: str) -> str:
    """The first ```language block of the README that contains ``needle``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if needle in b)


def readme_example(tmp_path: Path, module: str, yaml: str, needle: str) -> list[str]:
    """Write a README worked example into ``tmp_path`` (its Python block as ``<module>.py``, its
    YAML block at ``my_configs/<yaml>``) and return its command's train.py arguments."""
    (tmp_path / f"{module}.py").write_text(readme_block("python", f"# {module}.py"))
    config = tmp_path / "my_configs" / yaml
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(readme_block("yaml", f"# my_configs/{yaml}"))
    command = shlex.split(readme_block("bash", needle).replace("\\\n", " ")
                          .replace("$PWD", str(tmp_path)))
    assert command[:3] == ["PYTHONPATH=.", "python", "train.py"], command
    return command[3:]


class TwoTucker(nn.Module):
    """Two core groups with different K (3 and 4) plus a non-core ``bias`` parameter."""

    def __init__(self, seed: int = 0, std: float = 0.8, dtype=torch.float64):
        super().__init__()
        self.a = Tucker((4, 3), (2, 2), init="normal", seed=seed, std=std, dtype=dtype)
        self.b = Tucker((4, 3, 2), (3, 2, 2), init="normal", seed=seed + 1, std=std, dtype=dtype)
        self.bias = nn.Parameter(torch.full((4, 3, 2), 0.1, dtype=dtype))
        gen = torch.Generator().manual_seed(seed + 100)
        self.register_buffer("target_a", torch.randn(4, 3, generator=gen, dtype=dtype))
        self.register_buffer("target_b", torch.randn(4, 3, 2, generator=gen, dtype=dtype))

    def forward(self) -> torch.Tensor:
        """A non-degenerate loss: squared errors of both reconstructions (b with a bias)."""
        err_a = self.a() - self.target_a
        err_b = self.b() + self.bias - self.target_b
        return 0.5 * err_a.square().sum() + 0.5 * err_b.square().sum() + 0.1 * err_b.sum()


class LoRA(nn.Module):
    """W = B A with B zero-initialised: one core group (B, A) in which ||B|| = 0."""

    def __init__(self, seed: int = 0, dtype=torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(2, 5, generator=gen, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(4, 2, dtype=dtype))
        self.register_buffer("x", torch.randn(5, 3, generator=gen, dtype=dtype))
        self.register_buffer("y", torch.randn(4, 3, generator=gen, dtype=dtype))

    def cores(self):
        return (self.B, self.A)

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.B @ self.A @ self.x - self.y).square().sum()


class WithLoRA(nn.Module):
    """A Tucker group next to a LoRA group whose B core has zero norm."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.tucker = TwoTucker(seed)
        self.lora = LoRA(seed)

    def forward(self) -> torch.Tensor:
        return self.tucker() + self.lora()


def values(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of the parameters, in ``model.parameters()`` order."""
    return [p.detach().clone() for p in model.parameters()]


def loss_at(model: nn.Module, point: list[torch.Tensor]) -> torch.Tensor:
    """``model()`` (the loss) at parameter values ``point``, without touching the parameters."""
    names = [n for n, _ in model.named_parameters()]
    return functional_call(model, dict(zip(names, point, strict=True)), ())


def grad_at(model: nn.Module, point: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradient of the loss at parameter values ``point``."""
    leaves = [v.detach().clone().requires_grad_(True) for v in point]
    return list(torch.autograd.grad(loss_at(model, leaves), leaves))


def backward(model: nn.Module) -> torch.Tensor:
    """Fresh gradients of ``model()`` on ``.grad``."""
    model.zero_grad(set_to_none=True)
    loss = model()
    loss.backward()
    return loss


def closure_for(model: nn.Module):
    """torch's closure: zero the gradients, forward, backward, return the loss."""

    def closure():
        model.zero_grad(set_to_none=True)
        loss = model()
        loss.backward()
        return loss

    return closure


def sq(t: torch.Tensor) -> float:
    return float(t.detach().square().sum())


def das_lambdas(groups, grads, lrs, alpha: float, normalization: str) -> list[list[float]]:
    """Algorithm 2, line 5, written out per core with Python floats.

    ``groups[l]`` lists the cores of layer l, ``grads[l]`` their gradients, ``lrs[l]`` their eta:
    lambda_k = eta alpha u / ||G_k||^2 (||g_k||^2 - gbar_l), gbar_l = mean_k ||g_k||^2, with
    u = (K_l gbar_l)^(-1/2) ("layer") or u_D = (sum over all cores ||g||^2)^(-1/2) ("global").
    A zero-norm core gets 0.
    """
    total_all = sum(sq(g) for layer in grads for g in layer)
    out = []
    for cores, gs, eta in zip(groups, grads, lrs, strict=True):
        gsq = [sq(g) for g in gs]
        gbar = sum(gsq) / len(gsq)
        u = (sum(gsq) if normalization == "layer" else total_all) ** -0.5
        out.append([0.0 if sq(c) == 0 else eta * alpha * u * (gk - gbar) / sq(c)
                    for c, gk in zip(cores, gsq, strict=True)])
    return out


def task_closure(task, model: nn.Module, batch=None):
    """torch's closure for ``task.loss`` on one batch."""

    def closure():
        model.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        loss.backward()
        return loss

    return closure


def denoise(rank=(3, 3), seed: int = 0, std: float = 0.3, init_scales=(1.0, 1.0, 1.0), **task):
    """The Figure 1 task and its Tucker-2 model (``configs/model/tucker2.yaml`` by hand)."""
    from tensam.tasks import Tucker2Denoise
    from tensam.tensorized import Tucker

    t = Tucker2Denoise(**task)
    return t, Tucker(t.shape, rank, init="normal", seed=seed, std=std, dtype=t.dtype,
                     scales=init_scales)


def covid(rank=(8, 6, 8), seed: int = 0, init: str = "uniform", **task):
    """The Table 1 task and its Tucker model (``configs/model/tucker.yaml`` by hand)."""
    from tensam.tasks import TuckerCompletion
    from tensam.tensorized import Tucker

    t = TuckerCompletion(seed=seed, **task)
    return t, Tucker(t.data.shape, rank, init=init, seed=seed)


#: the classes the optimizer configs name, for optimizer nodes written in tests
TARGETS = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW",
           "sam": "tensam.optim.SAM", "nusam": "tensam.optim.NuSAM", "das": "tensam.optim.DAS",
           "nbar": "tensam.optim.NBAR", "obar": "tensam.optim.OBAR"}


def node(cfg: dict) -> dict:
    """The optimizer node the configs write (``_target_`` and arguments) of a short form
    ``{"method": "das", "alpha": 0.5, "base": {"name": "sgd", "lr": 0.1}}`` ("none": the base
    alone); a node with a ``_target_`` is returned as it is."""
    if "_target_" in cfg:
        return cfg
    cfg = dict(cfg)
    method, base = cfg.pop("method", "none"), dict(cfg.pop("base"))
    base = {"_target_": TARGETS[base.pop("name")], **base}
    return {"base": base} if method == "none" else {"_target_": TARGETS[method], **cfg,
                                                    "base": base}


def make_optimizer(cfg: dict, model: nn.Module, total_steps: int | None = None):
    """:func:`tensam.optim.build_optimizer` of :func:`node`'s ``cfg``."""
    return build_optimizer(node(cfg), model, total_steps=total_steps)


class NoHub:
    """huggingface_hub's HTTP session on a machine that reaches no hub (counts its calls)."""

    calls = 0

    def head(self, url, timeout):
        NoHub.calls += 1
        assert timeout <= 10
        raise ConnectionError("[Errno -2] Name or service not known")

    @staticmethod
    def offline(monkeypatch, variable: str) -> None:
        """No hub, no ``variable`` (the local data folder) and no offline switch: the run must
        say so in one line, without ``datasets.load_dataset`` (and its retries) running."""
        import huggingface_hub.utils
        import pytest

        datasets = pytest.importorskip("datasets")
        for key in (variable, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(huggingface_hub.utils, "get_session", NoHub)
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail(
            "datasets.load_dataset (and its retries) ran"))
