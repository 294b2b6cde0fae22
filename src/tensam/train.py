"""Hydra entry point: compose task x model x optimizer x logger, train, write the summary.

    python train.py experiment=table1 optimizer=das seed=1
    python train.py -m experiment=table1 optimizer=adam,sam,das seed=0,1,2
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tensam import distributed
from tensam.logging import RunLogger
from tensam.optim import build_optimizer
from tensam.tasks import build_task
from tensam.training import LoopConfig, load_checkpoint, train

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N', 'mps']")
    return torch.device(name)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """One training run described by a composed config; returns (and writes) its summary."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    seed_everything(int(cfg.seed))
    loop = LoopConfig(steps=int(cfg.steps), log_every=int(cfg.log_every),
                      eval_every=int(cfg.eval_every), checkpoint_every=int(cfg.checkpoint_every),
                      precision=str(cfg.precision))
    rank, world = distributed.init_from_env()
    device = distributed.local_device(resolve_device(str(cfg.device)))
    task = build_task(container["task"], container["model"]).to(device)
    model = distributed.wrap(task.build_model().to(device))
    optimizer = build_optimizer(container["optimizer"], model, total_steps=int(cfg.steps))
    start = load_checkpoint(run_dir / "checkpoint.pt", model, optimizer)
    logger = (RunLogger(run_dir, container, container["logger"].get("wandb"), resume_step=start)
              if rank == 0 else None)
    summary = train(task, model, optimizer, loop, run_dir, logger, start_step=start)
    summary["primary_metric"] = task.primary_metric
    summary["baselines"] = task.baselines() if cfg.get("baselines") and rank == 0 else {}
    summary["config"] = container
    summary["world_size"] = world
    if logger is not None:
        logger.finish(summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except ValueError as err:  # configuration errors: one clear line, no traceback
        print(f"tensam: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    metric = cfg.get("objective") or summary["primary_metric"]
    if metric not in summary:
        print(f"tensam: objective={metric!r} is not a summary key; allowed: "
              f"{sorted(k for k, v in summary.items() if isinstance(v, float))}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    return float(summary[metric])


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
