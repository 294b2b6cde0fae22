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
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tensam.errors import ConfigError

#: top-level keys that do not change the trajectory of a run
NOT_TRAJECTORY = ("logger", "log_every", "eval_every", "checkpoint_every", "keep_best",
                  "test_at_best", "resume", "threads", "device", "progress", "objective", "name",
                  "baselines", "hydra")
#: leaf keys that say where data lives or how it is loaded, not what it is (a run moved to a
#: machine with other paths still resumes), or how the same arithmetic is laid out in memory
#: (``flatten``: a scaling optimizer's flat core buffer changes rounding only, as ``threads`` does)
NOT_TRAJECTORY_LEAVES = ("root", "cache_dir", "num_workers", "flatten")
#: settings named first when a run directory of other settings is refused: what says most about
#: which run it is (the rest follow, the optimizer's keys before the others)
FIRST = ("optimizer._target_", "optimizer.base._target_", "seed", "steps", "epochs", "world_size",
         "task._target_", "model._target_", "optimizer.base.lr", "grad_accumulation",
         "task.batch_size", "precision")
RESUMES = ("auto", "never", "must")
PRECISIONS = ("fp32", "bf16")
PROGRESS = ("auto", True, False)


def _int(cfg: Mapping, key: str, minimum: int, optional: bool = False) -> None:
    value = cfg.get(key)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}"
                          + (" or null" if optional else ""))
    if value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")


#: the groups of the root config; each is built from its ``_target_`` and checks its own keys
GROUPS = ("task", "model", "optimizer", "scheduler", "logger")


def known_keys() -> set[str]:
    """The top-level keys a run reads: those of ``configs/train.yaml`` and its groups."""
    root = OmegaConf.load(Path(__file__).resolve().parent / "configs" / "train.yaml")
    return (set(root) - {"defaults"}) | set(GROUPS) | {"hydra"}


def validate(cfg: Mapping[str, Any]) -> None:
    """Check the loop's keys of a resolved config (the groups validate themselves when built);
    a top-level key that nothing reads (``+lerning_rate=...``) is refused."""
    unknown = sorted(set(cfg) - known_keys())
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}: nothing reads them; allowed: "
                          f"{sorted(known_keys())}")
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
    return trajectory_only(_flatten({k: v for k, v in cfg.items() if k not in NOT_TRAJECTORY}))


def trajectory_only(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted ``settings`` without the keys of :data:`NOT_TRAJECTORY_LEAVES` (stored settings of
    a run are read back through this, so a key dropped later does not split old runs from new)."""
    return {k: v for k, v in settings.items() if k.rsplit(".", 1)[-1] not in NOT_TRAJECTORY_LEAVES}


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


def compose(*overrides: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The root config under Hydra's command-line ``overrides`` (``"optimizer=das"``,
    ``"optimizer.alpha=0.5"``, ...), resolved outside a Hydra app, as plain data (what
    :func:`tensam.train.run` stores in a summary's ``"config"``), or its sections ``keys``: the
    one way scripts and tests get a configuration, so they build what ``train.py`` builds."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "configs"),
                               version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # keeps a copy, for ${hydra:...} interpolations
    with open_dict(cfg):
        del cfg["hydra"]
    if keys is None:
        return OmegaConf.to_container(cfg, resolve=True)
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
