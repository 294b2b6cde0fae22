"""Learning-rate schedules (``configs/scheduler``), stepped once per optimizer step.

Every schedule is a multiplier m(t) of each param group's base lr, one small class with its
options as constructor arguments, applied through ``torch.optim.lr_scheduler.LambdaLR``: its
position is in ``state_dict`` (checkpoints), and the lr that DAS and BAR read as eta^(t) is the
scheduled one. A new schedule is a subclass of :class:`Schedule` defining :meth:`factor` and a
YAML file naming it in ``_target_``; the run passes ``total_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from tensam.build import build
from tensam.errors import ConfigError


def _cos_ramp(frac: float, start: float, end: float) -> float:
    """From ``start`` at frac = 0 to ``end`` at frac = 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


class Schedule:
    """m(t) for step t of ``total_steps``: a linear warm-up over ``warmup_steps``, then
    :meth:`factor` of the fraction of the rest of the run done (a picklable callable)."""

    def __init__(self, total_steps: int, warmup_steps: int = 0):
        if not 0 <= warmup_steps <= total_steps:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be in "
                              f"[0, {total_steps}] (the run's steps)")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def factor(self, frac: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.factor((step - self.warmup_steps)
                           / max(self.total_steps - self.warmup_steps, 1))


class Constant(Schedule):
    """The base lr throughout (after the warm-up)."""

    def factor(self, frac: float) -> float:
        return 1.0


class Linear(Schedule):
    """Linear decay to 0 (the usual fine-tuning schedule)."""

    def factor(self, frac: float) -> float:
        return max(0.0, 1.0 - frac)


class Cosine(Schedule):
    """Cosine decay from the base lr to ``min_factor`` times it."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0):
        super().__init__(total_steps, warmup_steps)
        self.min_factor = min_factor

    def factor(self, frac: float) -> float:
        return _cos_ramp(frac, 1.0, self.min_factor)


class Step(Schedule):
    """lr * gamma^(number of ``milestones`` passed); milestones as fractions of the run."""

    def __init__(self, total_steps: int, warmup_steps: int = 0,
                 milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):
        super().__init__(total_steps, warmup_steps)
        self.milestones, self.gamma = tuple(milestones), gamma

    def factor(self, frac: float) -> float:
        return self.gamma ** sum(frac >= m for m in self.milestones)


class OneCycle(Schedule):
    """One-cycle (Smith and Topin 2019, torch's OneCycleLR shape): cosine rise from
    lr/div_factor to the peak over ``pct_start`` of the run, then cosine decay to
    lr/(div_factor * final_div_factor)."""

    def __init__(self, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        if not 0 < pct_start < 1:
            raise ConfigError(f"scheduler.pct_start={pct_start} must be in (0, 1)")
        super().__init__(total_steps)
        self.pct_start, self.div_factor = pct_start, div_factor
        self.final_div_factor = final_div_factor

    def __call__(self, step: int) -> float:
        rise = max(int(self.pct_start * self.total_steps), 1)
        low, final = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
        if step < rise:
            return _cos_ramp(step / rise, low, 1.0)
        return _cos_ramp((step - rise) / max(self.total_steps - rise, 1), 1.0, final)


def build_scheduler(cfg: Mapping, optimizer: torch.optim.Optimizer, total_steps: int):
    """The LambdaLR of the schedule ``cfg`` names (``_target_`` and its options) over
    ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, build(cfg, "scheduler", total_steps=total_steps))
