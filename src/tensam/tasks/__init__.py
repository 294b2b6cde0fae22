"""Tasks: data, model construction, loss and metrics. Registry used by ``train.py``."""

from tensam.tasks.base import Task
from tensam.tasks.completion import TuckerCompletion
from tensam.tasks.denoise import Tucker2Denoise

TASKS = {"tucker_completion": TuckerCompletion, "tucker2_denoise": Tucker2Denoise}


def build_task(task_cfg, model_cfg=None) -> Task:
    """Instantiate ``task_cfg['name']``; the model config is handed to the task, which owns
    model construction and names the models it supports in ``Task.models``."""
    cfg, model = dict(task_cfg), dict(model_cfg or {})
    name = cfg.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is not one of {sorted(TASKS)}")
    task_cls = TASKS[name]
    model_name = model.pop("name", None)
    if model_name not in task_cls.models:
        raise ValueError(f"model={model_name!r} does not fit task {name!r}; "
                         f"allowed: {list(task_cls.models)}")
    try:
        return task_cls(**cfg, **model)
    except TypeError as err:
        raise ValueError(f"bad task/model option for {name!r}: {err}") from None


__all__ = ["TASKS", "Task", "Tucker2Denoise", "TuckerCompletion", "build_task"]
