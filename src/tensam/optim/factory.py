"""Build an optimizer from a config mapping (``configs/optimizer/*.yaml``)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from tensam.cores import core_groups
from tensam.optim.das import DAS
from tensam.optim.sam import SAM

BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
PERTURB = ("all", "cores")
#: each method's options and defaults. An experiment may pin options of several methods at once
#: (e.g. rho and alpha for a sweep over optimizer=adam,sam,das); a method uses its own.
METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "sam": {"rho": 0.05, "adaptive": False, "eta": 0.01, "perturb": "all"},
    "das": {"alpha": 0.001, "normalization": "layer", "alpha_schedule": "constant",
            "eps": 1e-12, "compensated": True},
}


def _take(cfg: dict, method: str) -> dict:
    known = set().union(*METHODS.values())
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown optimizer key(s) {unknown}; allowed: {sorted(known)}")
    return {k: cfg.get(k, default) for k, default in METHODS[method].items()}


def build_base(cfg: Mapping, params) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in BASES:
        raise ValueError(f"optimizer.base.name={name!r} is not one of {sorted(BASES)}")
    if cfg.get("lr", 0) <= 0:
        raise ValueError(f"optimizer.base.lr must be > 0, got {cfg.get('lr')}")
    try:
        return BASES[name](params, **cfg)
    except TypeError as err:
        raise ValueError(f"bad optimizer.base option for {name}: {err}") from None


def build_optimizer(cfg: Mapping, model: nn.Module, total_steps: int | None = None):
    """The optimizer named by ``cfg['method']`` over base ``cfg['base']`` for ``model``."""
    cfg = dict(cfg)
    method = cfg.pop("method", "none")
    if method not in METHODS:
        raise ValueError(f"optimizer.method={method!r} is not one of {sorted(METHODS)}")
    base = build_base(cfg.pop("base", {}), [p for p in model.parameters() if p.requires_grad])
    kw = _take(cfg, method)
    if method == "none":
        return base
    if method == "sam":
        perturb = kw.pop("perturb")
        if perturb not in PERTURB:
            raise ValueError(f"optimizer.perturb={perturb!r} is not one of {list(PERTURB)}")
        chosen = None
        if perturb == "cores":
            chosen = [c for g in core_groups(model) for c in g.cores]
            if not chosen:
                raise ValueError("optimizer.perturb='cores' but the model has no core groups")
        return SAM(base, params_to_perturb=chosen, **kw)
    return DAS(base, core_groups(model), total_steps=total_steps, **kw)
