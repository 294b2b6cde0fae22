"""The task seam: a task owns data, loss and metrics; the model and the loop are shared.

A task is built from its config's ``_target_`` and hands the model config the data-dependent
arguments (:meth:`Task.model_inputs`: a tensor's shape, a number of classes, ...); the model is
then ``hydra.utils.instantiate(model_cfg, **task.model_inputs())`` (:func:`build_model`).
The loop asks the task for training batches (:meth:`Task.batches`), the loss of a batch and the
evaluation metrics, and owns ``train()``/``eval()`` mode.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tensam.errors import ConfigError

#: seconds a task without local data waits for the Hugging Face hub to answer before it gives up
#: (``datasets`` itself retries for about 25 s and ends in a traceback)
HUB_TIMEOUT = 5.0


def tokenizer_name(tokenizer: str | None, pretrained: str | None) -> str:
    """The tokenizer a text task uses: ``tokenizer`` when set, else the model's ``pretrained``
    weights' (the run passes the model config's ``pretrained``: a task never reads model
    keys itself)."""
    name = tokenizer if tokenizer is not None else pretrained
    if not isinstance(name, str):
        raise ConfigError(f"task.tokenizer=null and the model names no pretrained weights "
                          f"(model.pretrained={pretrained!r}); set task.tokenizer")
    return name


def hub_unreachable(timeout: float = HUB_TIMEOUT) -> str | None:
    """Why the Hugging Face hub cannot be reached, in one line; ``None`` when it answers (any
    HTTP status) or when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` sends ``datasets`` to its
    cache. One request through ``huggingface_hub``'s session (its proxies and endpoint), no
    retries."""
    if any(os.environ.get(key, "").upper() in ("1", "ON", "YES", "TRUE")
           for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - any failure to get an answer means unreachable
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return None


class Task(ABC):
    """What :func:`tensam.training.train` needs from a task."""

    #: every metric :meth:`evaluate` returns, with True where higher is better
    metrics: dict[str, bool] = {}
    #: the metric tables report and sweeps optimise by default
    primary_metric: str = "loss"
    #: batches per epoch (None: the task has no epochs, e.g. full-batch or fresh draws)
    steps_per_epoch: int | None = None
    #: where batches go (:meth:`to`)
    device = torch.device("cpu")

    def model_inputs(self) -> dict[str, Any]:
        """Data-dependent keyword arguments for the model's constructor."""
        return {}

    def to(self, device: torch.device) -> Task:
        """Send batches to ``device`` (a task with tensors of its own moves them too); returns
        the task."""
        self.device = torch.device(device)
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
    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        """The metrics of ``model`` (called in eval mode, without gradients). ``test=False``
        scores only :meth:`selection_metrics` (the loop's ``test_at_best``); a task with one
        evaluation split scores it either way."""

    @classmethod
    def selection_metrics(cls) -> set[str]:
        """The metrics :meth:`evaluate` returns with ``test=False``: those of a validation split
        held apart from the test split (``val_*``), else all of them."""
        return {m for m in cls.metrics if m.startswith("val_")} or set(cls.metrics)

    def info(self) -> dict[str, Any]:
        """Facts about the data this run used, for its summary (split sizes, measured label
        noise, ...)."""
        return {}

    def baselines(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Non-gradient reference solutions for ``model``'s family (e.g. HOOI at its rank),
        evaluated with the same metrics."""
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
            raise ConfigError(f"objective={metric!r} is not a metric of {cls.__name__}; allowed: "
                              f"{sorted([*cls.metrics, 'train/loss'])}")
        return cls.metrics[metric]
