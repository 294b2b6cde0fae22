"""Learning-rate schedules (``configs/scheduler``), stepped once per optimizer step.

Every schedule is a multiplier m(t) of each param group's base lr, applied through
``torch.optim.lr_scheduler.LambdaLR``, so its position is in ``state_dict`` (checkpoints) and the
lr that DAS and BAR read as eta^(t) is the scheduled one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "cosine", "linear", "step", "onecycle")


def _cos_ramp(frac: float, start: float, end: float) -> float:
    """From ``start`` at frac = 0 to ``end`` at frac = 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


@dataclass
class Multiplier:
    """m(t) for step t of ``total_steps`` (a picklable callable, so LambdaLR can save it)."""

    name: str
    total_steps: int
    warmup_steps: int = 0
    min_factor: float = 0.0
    milestones: Sequence[float] = (0.5, 0.75)
    gamma: float = 0.1
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __call__(self, step: int) -> float:
        if self.name == "onecycle":
            rise = max(int(self.pct_start * self.total_steps), 1)
            low, final = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
            if step < rise:
                return _cos_ramp(step / rise, low, 1.0)
            return _cos_ramp((step - rise) / max(self.total_steps - rise, 1), 1.0, final)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        frac = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        if self.name == "cosine":
            return _cos_ramp(frac, 1.0, self.min_factor)
        if self.name == "linear":
            return max(0.0, 1.0 - frac)
        if self.name == "step":
            return self.gamma ** sum(frac >= m for m in self.milestones)
        return 1.0


def build_scheduler(cfg: Mapping, optimizer: torch.optim.Optimizer, total_steps: int):
    """The LambdaLR of ``cfg`` (``name`` and its options) over ``total_steps`` steps."""
    cfg = dict(cfg)
    name = cfg.pop("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"scheduler.name={name!r} is not one of {list(SCHEDULES)}")
    try:
        multiplier = Multiplier(name, total_steps, **cfg)
    except TypeError as err:
        raise ValueError(f"bad scheduler option for {name!r}: {err}") from None
    if not 0 <= multiplier.warmup_steps <= total_steps:
        raise ValueError(f"scheduler.warmup_steps={multiplier.warmup_steps} must be in "
                         f"[0, {total_steps}] (the run's steps)")
    if name == "onecycle" and not 0 < multiplier.pct_start < 1:
        raise ValueError(f"scheduler.pct_start={multiplier.pct_start} must be in (0, 1)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
