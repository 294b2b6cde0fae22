"""Build the optimizer of a config node (``configs/optimizer``) for a model.

Every optimizer node has ``base``, the node of a ``torch.optim`` optimizer
(``optimizer/torch/*.yaml``, so ``optimizer.base.lr=...`` means the same for every choice), and:

* nothing else: that optimizer alone (``optimizer=sgd|adam|adamw``, and ``optimizer=none`` for
  the base ``optimizer/base=...`` chooses);
* a ``_target_`` and its arguments: a method wrapping it (``optimizer=sam|asam|das|nbar|obar|
  nusam``).

Both go through :func:`tensam.build.build`, which passes the run's objects by argument name:
``params`` to the base optimizer, and ``base`` (the built base), ``groups`` (the model's core
groups) and ``total_steps`` to a method whose constructor takes them. A model may define
``param_groups(options) -> list[dict]`` (torch's param-group dicts), e.g. to exclude norms and
biases from weight decay; every method then takes its per-group options from those groups.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from tensam.build import SPECIAL, build
from tensam.cores import core_groups
from tensam.errors import ConfigError


def model_param_groups(model: nn.Module, options: Mapping):
    """The model's own ``param_groups(options)`` if it defines one (``options``: the base
    optimizer's arguments), else its trainable parameters."""
    hook = getattr(model, "param_groups", None)
    if callable(hook):
        return hook({k: v for k, v in options.items() if k not in SPECIAL})
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(cfg: Mapping, model: nn.Module,
                    total_steps: int | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` (a resolved ``optimizer`` node) for ``model``."""
    cfg = dict(cfg)
    if not isinstance(cfg.get("base"), Mapping):
        raise ConfigError("optimizer.base is missing: every optimizer config names the "
                          "torch.optim optimizer it is or wraps (configs/optimizer/torch)")
    base_cfg = cfg.pop("base")
    base = build(base_cfg, "optimizer.base", params=model_param_groups(model, base_cfg))
    if not cfg:  # the base alone
        return base
    if "_target_" not in cfg:
        raise ConfigError(f"optimizer.{sorted(cfg)[0]} is not read: optimizer=none|sgd|adam|adamw "
                          "is its base alone (optimizer.base.*), with no method to take it")
    return build(cfg, "optimizer", base=base, groups=core_groups(model), total_steps=total_steps)
