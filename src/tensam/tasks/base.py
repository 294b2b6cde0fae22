"""The task seam: a task owns data, loss and metrics; the model and the loop are shared.

A task is built from its config's ``_target_`` and hands the model config the data-dependent
arguments (:meth:`Task.model_inputs`: a tensor's shape, a number of classes, ...); the model is
then ``hydra.utils.instantiate(model_cfg, **task.model_inputs())`` (:func:`build_model`).
The loop asks the task for training batches (:meth:`Task.batches`), the loss of a batch and the
evaluation metrics, and owns ``train()``/``eval()`` mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class Task(ABC):
    """What :func:`tensam.training.train` needs from a task."""

    #: every metric :meth:`evaluate` returns, with True where higher is better
    metrics: dict[str, bool] = {}
    #: the metric tables report and sweeps optimise by default
    primary_metric: str = "loss"
    #: batches per epoch (None: the task has no epochs, e.g. full-batch or fresh draws)
    steps_per_epoch: int | None = None

    def model_inputs(self) -> dict[str, Any]:
        """Data-dependent keyword arguments for the model's constructor."""
        return {}

    def to(self, device: torch.device) -> Task:
        """Move the task's tensors (data, masks) to ``device``; returns the task."""
        return self

    def batch(self, step: int) -> Any:
        """The training batch of ``step`` (deterministic given the task's seed and the step)."""
        raise NotImplementedError

    def batches(self, start_step: int = 0) -> Iterator[Any]:
        """Training batches from ``start_step`` on, so a resumed run sees what an uninterrupted
        one would; the default yields :meth:`batch` step by step. Loader-based tasks override
        it (epochs, samplers)."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The metrics of ``model`` (called in eval mode, without gradients)."""

    def info(self) -> dict[str, Any]:
        """Facts about the data this run used, for its summary (split sizes, measured label
        noise, ...)."""
        return {}

    def baselines(self) -> dict[str, dict[str, float]]:
        """Non-gradient reference solutions (e.g. HOOI), evaluated with the same metrics."""
        return {}

    @classmethod
    def primary_metric_of(cls, task_cfg: dict) -> str:
        """The primary metric a task of config ``task_cfg`` will have (before it is built)."""
        return cls.primary_metric

    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        """The direction of ``metric`` (a key of :attr:`metrics`, or ``train/loss``)."""
        if metric == "train/loss":
            return False
        if metric not in cls.metrics:
            raise ValueError(f"objective={metric!r} is not a metric of {cls.__name__}; allowed: "
                             f"{sorted([*cls.metrics, 'train/loss'])}")
        return cls.metrics[metric]
