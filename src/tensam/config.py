"""What a composed run config means beyond its values: validation, identity and objective.

* :func:`validate` checks the loop's own keys before anything is built or written, and
  :class:`ConfigError` is the one exception reported as a single ``configuration error`` line;
* :func:`trajectory_settings` / :func:`fingerprint` name every setting that shapes the training
  trajectory (everything but logging, checkpoint cadence, threads, device, ...): a checkpoint or
  a finished run is reused only under the same fingerprint, and a sweep's study is keyed by it;
* :func:`objective` is the summary key a sweep optimises and its direction, from the task.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: top-level keys that do not change the trajectory of a run
NOT_TRAJECTORY = ("logger", "log_every", "eval_every", "checkpoint_every", "keep_best", "resume",
                  "threads", "device", "progress", "objective", "name", "baselines", "hydra",
                  "presets")
#: leaf keys that say where data lives or how it is loaded, not what it is (a run moved to a
#: machine with other paths still resumes)
NOT_TRAJECTORY_LEAVES = ("root", "cache_dir", "num_workers")
#: settings named first when a run directory of other settings is refused: what says most about
#: which run it is (the rest follow, the optimizer's keys before the others)
FIRST = ("optimizer.method", "optimizer.base.name", "seed", "steps", "epochs", "world_size",
         "task._target_", "model._target_", "optimizer.base.lr", "grad_accumulation",
         "task.batch_size", "precision")
RESUMES = ("auto", "never", "must")
PRECISIONS = ("fp32", "bf16")
PROGRESS = ("auto", True, False)


class ConfigError(Exception):
    """A bad configuration value: reported in one line naming the key, before any work."""


def _int(cfg: Mapping, key: str, minimum: int, optional: bool = False) -> None:
    value = cfg.get(key)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}"
                          + (" or null" if optional else ""))
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check the loop's keys of a resolved config (the groups validate themselves when built)."""
    _int(cfg, "seed", 0)
    _int(cfg, "steps", 0)
    _int(cfg, "epochs", 1, optional=True)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        _int(cfg, key, 0)
    _int(cfg, "grad_accumulation", 1)
    _int(cfg, "threads", 1, optional=True)
    clip = cfg.get("grad_clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not 0 < clip < math.inf):  # NaN fails the comparison too
        raise ConfigError(f"grad_clip={clip!r} must be a finite number > 0 or null")
    for key, allowed in (("resume", RESUMES), ("precision", PRECISIONS), ("progress", PROGRESS)):
        if cfg.get(key) not in allowed:
            raise ConfigError(f"{key}={cfg.get(key)!r} is not one of {list(allowed)}"
                              + (" (fp16 needs loss scaling, which two-pass methods do not "
                                 "support)" if key == "precision" else ""))
    for key in ("keep_best", "baselines", "sync_batchnorm"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{key}={cfg.get(key)!r} must be true or false")
    if cfg.get("keep_best") and not cfg.get("eval_every"):
        raise ConfigError("keep_best=true needs eval_every > 0 (the best of which evaluations?)")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key in sorted(node):
            out.update(_flatten(node[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def trajectory_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that shapes the trajectory, as dotted keys -> values."""
    flat = _flatten({k: v for k, v in cfg.items() if k not in NOT_TRAJECTORY})
    return {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in NOT_TRAJECTORY_LEAVES}


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of :func:`trajectory_settings`."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _importance(key: str) -> tuple[int, str]:
    """Sort key of a setting in a refusal: the keys of :data:`FIRST` in that order, then the
    optimizer's, then the rest alphabetically."""
    if key in FIRST:
        return FIRST.index(key), key
    return (len(FIRST) if key.startswith("optimizer.") else len(FIRST) + 1), key


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ (or that only one side has), as ``key: old -> new``, the keys
    that matter most (:data:`FIRST`: method, base, seed, budget, ...) first."""
    keys = sorted(set(old) | set(new), key=_importance)
    missing = "<unset>"
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in keys
            if old.get(k, missing) != new.get(k, missing)]


def objective(cfg: Mapping[str, Any]) -> tuple[str, bool]:
    """(summary key a sweep optimises, higher is better), from ``objective`` or the task's
    primary metric; an unknown key raises :class:`ConfigError`."""
    from tensam.tasks import task_class

    try:
        cls = task_class(cfg["task"])
        key = cfg.get("objective") or cls.primary_metric_of(cfg["task"])
        return key, cls.higher_is_better(key)
    except ValueError as err:
        raise ConfigError(str(err)) from None
