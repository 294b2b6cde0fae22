"""Tasks: data, loss and metrics, built from ``_target_`` configs (``configs/task``)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from tensam.build import build, target_of
from tensam.errors import ConfigError
from tensam.tasks.base import Task
from tensam.tasks.causal_lm import CausalLMTask
from tensam.tasks.classification import Classification
from tensam.tasks.completion import TuckerCompletion
from tensam.tasks.denoise import Tucker2Denoise
from tensam.tasks.glue import GlueFewShot
from tensam.tasks.vision import ImageClassification


def task_class(task_cfg: Mapping) -> type[Task]:
    """The task class a task config names (without building it)."""
    cls = target_of(task_cfg, "task")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task._target_={task_cfg['_target_']!r} is not a tensam Task")
    return cls


def build_task(task_cfg: Mapping, pretrained: str | None = None) -> Task:
    """The task of ``task_cfg`` (``_target_`` and its arguments); a task that tokenizes text
    gets ``pretrained``, the model's weights, for the tokenizer its config leaves null."""
    task_class(task_cfg)
    return build(task_cfg, "task", pretrained=pretrained)


def build_model(model_cfg: Mapping, task: Task) -> nn.Module:
    """``model_cfg``'s ``_target_`` called with its arguments and the task's
    :meth:`~Task.model_inputs` (the task's values serve only keys the config does not set)."""
    inputs = {k: v for k, v in task.model_inputs().items() if k not in model_cfg}
    return build(model_cfg, "model", **inputs)


__all__ = ["CausalLMTask", "Classification", "GlueFewShot", "ImageClassification", "Task",
           "Tucker2Denoise", "TuckerCompletion", "build_model", "build_task", "task_class"]
