"""The shared training loop: any task x any model x any optimizer, with resumable checkpoints."""

from __future__ import annotations

import io
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tensam.cores import core_groups
from tensam.distributed import unwrap
from tensam.logging import RunLogger
from tensam.metrics.norm_dynamics import norm_dynamics
from tensam.norms import CoreIndex
from tensam.optim import TwoPassOptimizer
from tensam.tasks.base import Task


@dataclass
class LoopConfig:
    steps: int
    log_every: int = 100
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: no checkpoints
    precision: str = "fp32"  # fp32 | bf16 (autocast; parameters and optimizer stay fp32)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {list(PRECISIONS)} "
                             "(fp16 needs loss scaling, which two-pass methods do not support)")


PRECISIONS = ("fp32", "bf16")


def save_checkpoint(path: Path, model, optimizer, step: int) -> None:
    buf = io.BytesIO()
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": torch.get_rng_state()}, buf)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def load_checkpoint(path: Path, model, optimizer) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def train_step(task: Task, model, optimizer, batch, precision: str = "fp32"):
    """Forward and backward at w; returns the loss and the closure that two-pass methods call to
    re-run forward/backward at w + e."""
    device = next(model.parameters()).device.type
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16"
                else nullcontext())

    def closure():
        with autocast:
            loss = task.loss(model, batch)
        loss.backward()
        return loss

    optimizer.zero_grad(set_to_none=True)
    loss = closure()
    return loss, closure


def train(task: Task, model, optimizer, loop: LoopConfig, run_dir: Path,
          logger: RunLogger | None, scheduler=None, start_step: int = 0) -> dict:
    """Train for ``loop.steps`` steps; log loss, metrics and norm dynamics; return the summary.

    ``logger=None`` (non-zero ranks of a distributed run) logs and checkpoints nothing."""
    index = CoreIndex(core_groups(unwrap(model)))  # layer names as without DDP
    ckpt = Path(run_dir) / "checkpoint.pt"
    two_pass = isinstance(optimizer, TwoPassOptimizer)
    started = time.perf_counter()
    for step in range(start_step, loop.steps):
        loss, closure = train_step(task, model, optimizer, task.batch(step), loop.precision)
        record = None
        if loop.log_every and step % loop.log_every == 0:
            record = {"train/loss": loss.item(), **norm_dynamics(index)}
        optimizer.step(closure) if two_pass else optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if loop.eval_every and (step + 1) % loop.eval_every == 0:
            record = {**(record or {}), **{f"eval/{k}": v for k, v in task.evaluate(model).items()}}
        if record is not None and logger is not None:
            logger.log(record, step)
        if logger is not None and loop.checkpoint_every and (step + 1) % loop.checkpoint_every == 0:
            save_checkpoint(ckpt, model, optimizer, step + 1)
    elapsed = time.perf_counter() - started
    final = task.evaluate(model)
    with torch.no_grad():
        final_loss = task.loss(model, task.batch(loop.steps)).item()
    q_final = {k: v for k, v in norm_dynamics(index).items() if k.endswith("Q")}
    summary = {**final, "train/loss": final_loss, **q_final, "steps": loop.steps,
               "seconds": elapsed, "seconds_per_step": elapsed / max(loop.steps - start_step, 1)}
    if logger is not None:
        logger.log({f"eval/{k}": v for k, v in final.items()}, loop.steps)
    return summary


__all__ = ["LoopConfig", "load_checkpoint", "save_checkpoint", "train", "train_step"]
