"""Coefficient schedules alpha^(t) (Algorithm 2, line 1; BAR Appendix A.6)."""

from __future__ import annotations

import math

from tensam.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine")


def check_schedule(schedule: str, total_steps: int | None) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"alpha_schedule={schedule!r} is not one of {list(SCHEDULES)}")
    if schedule != "constant" and (total_steps is None or total_steps <= 0):
        raise ConfigError(f"alpha_schedule={schedule!r} needs total_steps > 0, got {total_steps}")


def scheduled(value: float, schedule: str, step: int, total_steps: int | None) -> float:
    """alpha^(t): constant, linear decay to 0, or cosine decay to 0 over ``total_steps``."""
    if schedule == "constant":
        return value
    frac = min(step / total_steps, 1.0)
    if schedule == "linear":
        return value * (1.0 - frac)
    return value * 0.5 * (1.0 + math.cos(math.pi * frac))
