"""Hydra entry point: compose task x model x optimizer x scheduler x logger, train, summarise.

    python train.py experiment=table1 optimizer=das seed=1
    python train.py -m experiment=table1 optimizer=adamw,sam,das seed=0,1,2

A run is checked whole before anything is built or written (:func:`tensam.config.validate`, then
every group is built); a bad value is reported in one line naming the key (exit 2), and only a
bad value: any other exception keeps its traceback (exit 1). A run
directory belongs to one set of trajectory settings (:func:`tensam.config.fingerprint`): a run
started again in the same directory resumes its checkpoint, or returns its finished summary,
only under the same settings, and is refused otherwise. A run whose loss becomes non-finite
writes a summary marked ``diverged`` and exits 3; under ``-m`` the job returns NaN after that
line instead (a result: the other jobs of the grid go on, a sweeper records the trial FAIL).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tensam import distributed
from tensam.build import build, check
from tensam.config import (
    ConfigError,
    differing_keys,
    fingerprint,
    objective,
    trajectory_only,
    trajectory_settings,
    validate,
)
from tensam.optim import build_optimizer
from tensam.schedulers import build_scheduler
from tensam.tasks import build_model, build_task
from tensam.training import (
    CheckpointError,
    DivergenceError,
    LoopConfig,
    Output,
    Parts,
    read_checkpoint,
    restore,
    train,
)

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
#: what the run passes a logger's constructor
LOGGER_ARGS = ("run_dir", "config", "resume_step")
#: the settings key of the number of processes (torchrun), set when it is not 1
WORLD_SIZE = "world_size"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N', "
                          "'mps']")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r}: {str(err).splitlines()[0]}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name!r} but torch sees no CUDA GPU (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); use "
                              "device=auto or device=cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name!r} but torch sees {count} CUDA GPU(s) "
                              f"(cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS is not available here; use device=auto "
                          "or device=cpu")
    return device


def resolve(cfg: DictConfig) -> dict:
    """The config as plain data; an interpolation or type error names the key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or ''}: {str(err).splitlines()[0]}") from None


class RunDir:
    """What a run directory already holds, judged against this run's settings."""

    def __init__(self, path: Path, settings: dict, resume: str):
        self.path, self.settings, self.fingerprint = path, settings, fingerprint(settings)
        self.checkpoint, self.summary = path / "checkpoint.pt", path / "summary.json"
        self.resume = resume

    def _check(self, what: Path, stored: dict | None) -> None:
        """Refuse ``stored`` (a summary or checkpoint) of other settings; settings a later
        version no longer counts (:func:`tensam.config.trajectory_only`) do not refuse it."""
        if stored is None or self.fingerprint not in (
                stored.get("fingerprint"),
                fingerprint(trajectory_only(stored.get("settings") or {}))):
            one = {WORLD_SIZE: 1}  # a single process's settings leave it out
            keys = differing_keys({**one, **((stored or {}).get("settings") or {})},
                                  {**one, **self.settings})
            raise CheckpointError(
                f"{what} was written by a run with other settings ({'; '.join(keys[:6])}"
                f"{f'; ... {len(keys) - 6} more' if len(keys) > 6 else ''}); use another "
                "hydra.run.dir, or pass "
                "resume=never to start over in this one")

    def finished(self) -> dict | None:
        """The stored summary of this very run, if it already finished (resume=never: None)."""
        if self.resume == "never" or not self.summary.exists():
            return None
        try:
            stored = json.loads(self.summary.read_text())
        except ValueError:
            return None  # a torn summary: the run is redone from its checkpoint
        self._check(self.summary, stored)
        return stored

    def checkpoint_state(self) -> dict | None:
        """The checkpoint to resume, checked against this run's settings; None to start
        afresh. resume=never deletes what an earlier run left."""
        if self.resume == "never":
            for stale in (self.checkpoint, self.summary, self.path / "best.pt"):
                stale.unlink(missing_ok=True)
            return None
        if not self.checkpoint.exists():
            if self.resume == "must":
                raise CheckpointError(f"resume=must but {self.checkpoint} does not exist")
            return None
        ckpt = read_checkpoint(self.checkpoint)
        self._check(self.checkpoint, ckpt)
        return ckpt


def run(cfg: DictConfig, run_dir: Path, progress: bool = False) -> dict:
    """One training run described by a composed config; returns (and writes) its summary.

    Raises :class:`ConfigError` or :class:`CheckpointError` before any work for a bad config
    or run directory, and :class:`DivergenceError` (after writing the summary) for a non-finite
    loss.
    """
    container = resolve(cfg)
    container.pop("hydra", None)
    validate(container)
    settings = trajectory_settings(container)
    world = distributed.world_size()
    if world != 1:  # absent for one process, so single-process fingerprints stay what they were
        settings[WORLD_SIZE] = world
    key, higher = objective(container)
    run_dir = Path(run_dir)
    # a finished run of these very settings is returned without building anything (its
    # config was checked when it ran); a run directory of other settings is refused
    where = RunDir(run_dir, settings, container["resume"])
    stored = where.finished()
    if stored is not None:
        if stored.get("status") == "diverged":
            loss = stored.get("train/loss")  # strict JSON stores a non-finite loss as null
            raise DivergenceError(stored["diverged_at_step"], float("nan") if loss is None
                                  else loss)
        print(f"tensam: {run_dir} already holds this run's summary; not training again",
              file=sys.stderr)
        return stored
    if container.get("threads"):
        torch.set_num_threads(int(container["threads"]))
    rank, world = distributed.init_from_env()
    device = distributed.local_device(resolve_device(container["device"]))
    seed_everything(int(container["seed"]))
    # build everything before writing anything: a bad value raises ConfigError here, in one
    # line; any other exception of a constructor is a bug and keeps its traceback
    task = build_task(container["task"], container["model"].get("pretrained")).to(device)
    task.steps_per_epoch  # noqa: B018 (a lazily read training set is sized, and checked, here)
    model = build_model(container["model"], task).to(device)
    if container.get("sync_batchnorm") and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if key not in task.metrics and key != "train/loss":
        raise ConfigError(f"objective={key!r} is not a metric of the task; allowed: "
                          f"{sorted([*task.metrics, 'train/loss'])}")
    if container["test_at_best"] and key not in task.selection_metrics():
        raise ConfigError(f"test_at_best=true scores only {sorted(task.selection_metrics())} "
                          f"during training, not objective={key!r}; select on one of them")
    steps = int(container["steps"])
    if container.get("epochs"):
        if not task.steps_per_epoch:
            raise ConfigError(f"epochs={container['epochs']} needs a task with epochs; "
                              f"{type(task).__name__} counts steps (use steps=N)")
        steps = container["epochs"] * task.steps_per_epoch // container["grad_accumulation"]
    model = distributed.wrap(model)
    optimizer = build_optimizer(container["optimizer"], distributed.unwrap(model),
                                total_steps=steps)
    scheduler = build_scheduler(container["scheduler"], optimizer, steps)
    check(container["logger"], "logger", provided=LOGGER_ARGS)
    ckpt = where.checkpoint_state()
    state = restore(ckpt, model, optimizer, scheduler) if ckpt is not None else None
    start = state.step if state is not None else 0
    loop = LoopConfig(steps=steps, log_every=container["log_every"],
                      eval_every=container["eval_every"],
                      checkpoint_every=container["checkpoint_every"],
                      precision=container["precision"],
                      grad_accumulation=container["grad_accumulation"],
                      grad_clip=container["grad_clip"], objective=key, higher_is_better=higher,
                      keep_best=container["keep_best"], test_at_best=container["test_at_best"],
                      progress=progress)
    logger = (build(container["logger"], "logger", run_dir=run_dir, config=container,
                    resume_step=start) if rank == 0 else None)
    summary = train(Parts(task, model, optimizer, scheduler), loop,
                    Output(run_dir, logger, where.fingerprint, settings), state)
    started = time.perf_counter()
    baselines = (task.baselines(distributed.unwrap(model))
                 if container["baselines"] and rank == 0 else {})
    summary.update({"primary_metric": task.primary_metric, "objective": key, "data": task.info(),
                    "baselines": baselines, "baselines_seconds": time.perf_counter() - started,
                    "model_info": model_info(distributed.unwrap(model)),
                    "fingerprint": where.fingerprint, "settings": settings,
                    "config": container, "world_size": world})
    if logger is not None:
        logger.finish(summary)
    if summary["status"] == "diverged":
        raise DivergenceError(summary["diverged_at_step"], summary["train/loss"])
    return summary


def model_info(model: torch.nn.Module) -> dict:
    """Parameter counts (a model's own ``parameter_counts()`` where it has one, e.g. the
    adapters apart from the trainable total), and the per-layer reports of a compressed model
    (:func:`tensam.compress.compress`), for the run's summary."""
    counts = getattr(model, "parameter_counts", None)
    info = counts() if callable(counts) else {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if hasattr(model, "compression_report"):
        info["compression"] = [dataclasses.asdict(r) for r in model.compression_report]
    return info


def _progress_wanted(cfg: DictConfig, multirun: bool) -> bool:
    setting = cfg.get("progress", "auto")
    return sys.stderr.isatty() and not multirun if setting == "auto" else bool(setting)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = hydra.core.hydra_config.HydraConfig.get()
    multirun = hydra_cfg.mode == hydra.types.RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = run(cfg, run_dir, progress=_progress_wanted(cfg, multirun))
    except (ConfigError, CheckpointError) as err:
        if multirun:
            raise
        kind = "configuration" if isinstance(err, ConfigError) else "run directory"
        print(f"tensam: {kind} error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        print(f"tensam: {err}; summary in {run_dir / 'summary.json'}", file=sys.stderr)
        if multirun:  # a result, not a crash: the other jobs go on, a sweeper records FAIL
            return float("nan")
        sys.exit(3)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    # a sweeper ranks a run by its best evaluation where it had several (eval_every > 0)
    key = summary["objective"]
    return float(summary.get(f"best/{key}", summary[key]))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
