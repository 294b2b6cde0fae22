"""The task seam: a task owns data, model construction, loss and metrics; the loop is shared."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Task(ABC):
    """What :func:`tensam.training.train` needs from a task."""

    #: metric that tables report, and the direction in which it improves
    primary_metric: str = "loss"
    higher_is_better: bool = False
    #: names of the ``configs/model`` entries this task can build
    models: tuple[str, ...] = ()

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    def to(self, device: torch.device) -> Task:
        """Move the task's tensors (data, masks) to ``device``; returns the task."""
        return self

    @abstractmethod
    def batch(self, step: int) -> Any:
        """The training batch for ``step`` (deterministic given the task's seed and the step)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def baselines(self) -> dict[str, dict[str, float]]:
        """Non-gradient reference solutions (e.g. HOOI), evaluated with the same metrics."""
        return {}
