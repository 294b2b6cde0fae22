"""Build an optimizer from a config mapping (``configs/optimizer/*.yaml``).

The method (``method``) and the base optimizer it wraps (``base.name``) are independent choices;
``alone: <base>`` marks the configs ``optimizer=sgd|adam|adamw`` (that base, no method), which
are refused when the composed base is another one rather than silently training it.

A model may define ``param_groups(base_cfg) -> list[dict]`` (torch's param-group dicts) to, for
example, exclude norms and biases from weight decay or give a head its own learning rate; every
method then takes its per-group options (``rho``, ``lr``) from those groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tensam.cores import core_groups
from tensam.optim.bar import NBAR, OBAR
from tensam.optim.das import DAS
from tensam.optim.nusam import NuSAM
from tensam.optim.sam import SAM

BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
PERTURB = ("all", "cores")
#: each method's options and defaults. An experiment may pin options of several methods at once
#: (e.g. rho and alpha for a sweep over optimizer=adam,sam,das); a method uses its own.
METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "sam": {"rho": 0.05, "adaptive": False, "eta": 0.01, "perturb": "all"},
    "das": {"alpha": 0.001, "normalization": "global", "alpha_schedule": "constant",
            "eps": 1e-12, "compensated": True, "flatten": "auto"},
    "nbar": {"alpha": 0.5, "alpha_schedule": "linear", "compensated": True, "flatten": "auto"},
    "obar": {"alpha": 0.5, "alpha_schedule": "linear", "compensated": True, "flatten": "auto"},
    "nusam": {"rho": 0.05, "power_iterations": 1, "normalized": False, "matrices": "2d",
              "restore": "inplace", "perturb": "all"},
}
TWO_PASS = {"sam": SAM, "nusam": NuSAM}
SCALING = {"das": DAS, "nbar": NBAR, "obar": OBAR}


def _finite_number(value) -> bool:
    """A real number, not a bool, not NaN or +-inf (Hydra reads ``nan``/``inf`` as floats)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _typed(key: str, value, default):
    """``value`` checked against the type of ``default``; a wrong type names the key."""
    if isinstance(default, bool) or default in ("auto",):
        ok = isinstance(value, bool) or (default == "auto" and value == "auto")
        kind = "true or false" + (" or auto" if default == "auto" else "")
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
        if ok and not math.isfinite(value):
            raise ValueError(f"optimizer.{key}={value!r} must be finite (not nan or inf)")
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"optimizer.{key}={value!r} must be {kind}")
    return value


def _take(cfg: dict, method: str) -> dict:
    known = set().union(*METHODS.values())
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown optimizer key(s) {unknown}; allowed: {sorted(known)}")
    return {k: _typed(k, cfg.get(k, default), default) for k, default in METHODS[method].items()}


def _perturbed(perturb: str, model: nn.Module) -> list[torch.Tensor] | None:
    """The parameters a two-pass method may perturb: all (None) or the cores of core groups."""
    if perturb not in PERTURB:
        raise ValueError(f"optimizer.perturb={perturb!r} is not one of {list(PERTURB)}")
    if perturb == "all":
        return None
    chosen = [c for g in core_groups(model) for c in g.cores]
    if not chosen:
        raise ValueError("optimizer.perturb='cores' but the model has no core groups")
    return chosen


def build_base(cfg: Mapping, params) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in BASES:
        raise ValueError(f"optimizer.base.name={name!r} is not one of {sorted(BASES)}")
    for key, value in cfg.items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) for v in numbers):
            raise ValueError(f"optimizer.base.{key}={value!r} must be a number or numbers")
        if not all(_finite_number(v) or isinstance(v, bool) for v in numbers):
            raise ValueError(f"optimizer.base.{key}={value!r} must be finite (not nan or inf)")
    if cfg.get("lr", 0) <= 0:
        raise ValueError(f"optimizer.base.lr must be > 0, got {cfg.get('lr')}")
    try:
        return BASES[name](params, **cfg)
    except TypeError as err:
        raise ValueError(f"bad optimizer.base option for {name}: {err}") from None


def model_param_groups(model: nn.Module, base_cfg: Mapping):
    """The model's own ``param_groups(base_cfg)`` if it defines one, else its trainable
    parameters."""
    hook = getattr(model, "param_groups", None)
    if callable(hook):
        return hook(dict(base_cfg))
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(cfg: Mapping, model: nn.Module, total_steps: int | None = None):
    """The optimizer named by ``cfg['method']`` over base ``cfg['base']`` for ``model``."""
    cfg = dict(cfg)
    method = cfg.pop("method", "none")
    if method not in METHODS:
        raise ValueError(f"optimizer.method={method!r} is not one of {sorted(METHODS)}")
    base_cfg = dict(cfg.pop("base", {}))
    alone = cfg.pop("alone", None)
    if alone is not None and alone != base_cfg.get("name"):
        raise ValueError(
            f"optimizer={alone} trains {alone} alone, but the base optimizer is "
            f"{base_cfg.get('name')!r} (an experiment's choice); ask for "
            f"optimizer=none optimizer/base={alone}, or for a method over "
            f"{base_cfg.get('name')!r}")
    base = build_base(base_cfg, model_param_groups(model, base_cfg))
    kw = _take(cfg, method)
    if method == "none":
        return base
    if method in TWO_PASS:
        chosen = _perturbed(kw.pop("perturb"), model)
        return TWO_PASS[method](base, params_to_perturb=chosen, **kw)
    return SCALING[method](base, core_groups(model), total_steps=total_steps, **kw)
