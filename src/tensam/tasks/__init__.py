"""Tasks: data, loss and metrics, built from ``_target_`` configs (``configs/task``)."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import get_class, instantiate
from torch import nn

from tensam.tasks.base import Task
from tensam.tasks.causal_lm import CausalLMTask
from tensam.tasks.classification import Classification
from tensam.tasks.completion import TuckerCompletion
from tensam.tasks.denoise import Tucker2Denoise
from tensam.tasks.glue import GlueFewShot
from tensam.tasks.vision import ImageClassification


def _target(cfg: Mapping, key: str) -> str:
    target = cfg.get("_target_")
    if not isinstance(target, str):
        raise ValueError(f"{key}._target_ is missing: a config of group '{key}' names the class "
                         "it builds, e.g. _target_: tensam.tasks.TuckerCompletion")
    return target


def task_class(task_cfg: Mapping) -> type[Task]:
    """The task class a task config names (without building it)."""
    cls = get_class(_target(task_cfg, "task"))
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task._target_={task_cfg['_target_']!r} is not a tensam Task")
    return cls


def _instantiate(cfg: Mapping, key: str, **kwargs):
    _target(cfg, key)
    try:
        return instantiate(dict(cfg), **kwargs)
    except Exception as err:  # hydra wraps the constructor's error; report the cause's words
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, TypeError)):
            raise ValueError(str(cause)) from None
        raise


def build_task(task_cfg: Mapping) -> Task:
    """The task of ``task_cfg`` (``_target_`` and its arguments)."""
    task_class(task_cfg)
    return _instantiate(task_cfg, "task")


def build_model(model_cfg: Mapping, task: Task) -> nn.Module:
    """``model_cfg``'s ``_target_`` called with its arguments and the task's
    :meth:`~Task.model_inputs` (the task's values win only for keys the config does not set)."""
    inputs = {k: v for k, v in task.model_inputs().items() if k not in model_cfg}
    return _instantiate(model_cfg, "model", **inputs)


__all__ = ["CausalLMTask", "Classification", "GlueFewShot", "ImageClassification", "Task",
           "Tucker2Denoise", "TuckerCompletion", "build_model", "build_task", "task_class"]
