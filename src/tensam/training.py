"""The shared training loop: any task x any model x any optimizer, resumable and fail-loud.

One step is ``optimizer.step(closure)`` for every optimizer, torch's contract (see
:mod:`tensam.optim.base`): the closure zeroes the gradients, runs forward and backward over the
step's micro-batches (gradient accumulation) and returns the loss; a two-pass method calls it
twice, so both of SAM's passes see, and accumulate, the same micro-batches. Around that the loop
owns what every task needs:

* ``train()``/``eval()`` mode; BatchNorm running statistics are updated by the first pass only
  (:func:`frozen_batchnorm` during the others);
* the norm dynamics (Q, Cov per layer) from the first pass's gradients, before clipping;
* gradient clipping of the gradient the update uses, bf16 autocast, an LR scheduler per step;
* a non-finite loss stops the run (:class:`DivergenceError`, naming the step), never trains on;
* checkpoints (atomic, with RNG states and the wall time so far), the best evaluation on the
  objective (LM-BFF's / MeZO's / the HF Trainer's best checkpoint: every metric of it in the
  summary as ``best/<metric>`` with ``best/step``, its weights in ``best.pt`` with
  ``keep_best``), and a progress line;
* ``test_at_best``: the evaluations during training score only what selects (the validation
  split, :meth:`Task.selection_metrics`) and the best one's weights are kept in memory (and in
  the checkpoints); at the end the test split is scored once on them, the HF Trainer's
  ``load_best_model_at_end``. The summary's ``best/*`` are those of scoring every split at
  every evaluation, at the cost of two test evaluations per run instead of one per evaluation.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensam.cores import core_groups
from tensam.distributed import rank, unwrap
from tensam.logging import RunLogger
from tensam.metrics.norm_dynamics import norm_dynamics
from tensam.norms import CoreIndex
from tensam.tasks.base import Task

#: how often (in steps) a non-finite loss is looked for between log, eval and checkpoint steps;
#: each look is one host-device sync
CHECK_EVERY = 25
#: seconds between progress lines
PROGRESS_SECONDS = 10.0


@dataclass
class LoopConfig:
    steps: int
    log_every: int = 100
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: no checkpoints
    precision: str = "fp32"  # fp32 | bf16 (autocast; parameters and optimizer stay fp32)
    grad_accumulation: int = 1
    grad_clip: float | None = None
    objective: str | None = None  # evaluated metric that picks the best evaluation (best/*)
    higher_is_better: bool = True
    keep_best: bool = False
    test_at_best: bool = False
    progress: bool = False


@dataclass
class Parts:
    """What a run trains: the task, the model, its optimizer and (optionally) a scheduler."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # a torch LR scheduler, stepped once per step


@dataclass
class Output:
    """Where a run writes. Rank 0 (:func:`tensam.distributed.rank`) writes the checkpoints into
    ``run_dir``; the logger (None on other ranks) gets the records; ``fingerprint`` and
    ``settings`` go into every checkpoint so a resume under other settings is refused."""

    run_dir: Path
    logger: RunLogger | None = None
    fingerprint: str | None = None
    settings: dict | None = None


class DivergenceError(RuntimeError):
    """The training loss became non-finite; the summary is written, marked diverged."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"the training loss is {loss} at step {step}: the run diverged "
                         "(lower the learning rate, rho or alpha)")
        self.step, self.loss = step, loss

    def __reduce__(self):  # pickled by (step, loss): it crosses process boundaries (joblib)
        return type(self), (self.step, self.loss)


class CheckpointError(Exception):
    """A checkpoint that cannot be used (truncated, or written by other settings)."""


@dataclass
class State:
    """Where a run stands: what a checkpoint restores beyond the model and optimizer."""

    step: int = 0
    seconds: float = 0.0  # training wall time of earlier sessions of this run
    best: float | None = None
    best_step: int | None = None
    best_metrics: dict | None = None  # every metric of the evaluation at best_step
    best_weights: dict | None = None  # with test_at_best: what training changes, at best_step


# -- checkpoints ------------------------------------------------------------------------------

def _rng_states() -> dict:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path: Path, model, optimizer, state: State, scheduler=None,
                    fingerprint: str | None = None, settings: dict | None = None) -> None:
    """Everything needed to continue the run, written atomically (a kill leaves the old file)."""
    buf = io.BytesIO()
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "step": state.step, "seconds": state.seconds, "best": state.best,
                "best_step": state.best_step, "best_metrics": state.best_metrics,
                "best_weights": state.best_weights, "rng": _rng_states(),
                "fingerprint": fingerprint, "settings": settings}, buf)
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # a failed write (a full disk) leaves the old file and no temporary file behind
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents on the CPU; a damaged file raises :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                              f"{err}); delete it or pass resume=never to start over") from None


def restore(ckpt: dict, model, optimizer, scheduler=None) -> State:
    """Load a checkpoint read by :func:`read_checkpoint` into the run's objects."""
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["cpu"] if isinstance(rng, dict) else rng)
    if isinstance(rng, dict) and "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return State(int(ckpt["step"]), float(ckpt.get("seconds", 0.0)), ckpt.get("best"),
                 ckpt.get("best_step"), ckpt.get("best_metrics"), ckpt.get("best_weights"))


# -- one step ---------------------------------------------------------------------------------

@contextmanager
def frozen_batchnorm(model: nn.Module):
    """BatchNorm layers normalise with the batch statistics but leave their running statistics
    (and ``num_batches_tracked``) alone: for SAM's second pass at w + e."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def make_closure(task: Task, model, optimizer, micro_batches: list, loop: LoopConfig,
                 on_first_backward=None):
    """torch's closure for one step: zero, forward and backward over ``micro_batches`` (mean
    loss), clip; the first call runs ``on_first_backward`` before clipping, later calls keep the
    BatchNorm statistics frozen. Returns the detached mean loss."""
    device = next(model.parameters()).device.type
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if loop.precision == "bf16"
                else nullcontext())
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    calls, n = 0, len(micro_batches)

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        with frozen_batchnorm(model) if calls > 1 else nullcontext():
            for i, batch in enumerate(micro_batches):
                last = i == n - 1
                with model.no_sync() if ddp and not last else nullcontext(), autocast:
                    loss = task.loss(model, batch)
                    if n > 1:  # one micro-batch: no division by 1 (exact anyway), two ops fewer
                        loss = loss / n
                loss.backward()
                total = total + loss.detach() if n > 1 else loss.detach()
        if calls == 1 and on_first_backward is not None:
            on_first_backward()
        if loop.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        return total

    return closure


def train_step(task: Task, model, optimizer, batch, precision: str = "fp32",
               on_first_backward=None) -> torch.Tensor:
    """One optimizer step on one batch, outside :func:`train` (scripts, tests, benchmarks);
    ``on_first_backward`` runs once the first pass's gradients are on ``.grad``. Returns the
    loss of the first pass."""
    closure = make_closure(task, model, optimizer, [batch], LoopConfig(1, precision=precision),
                           on_first_backward)
    return optimizer.step(closure)


# -- the loop ---------------------------------------------------------------------------------

class _Progress:
    """A line on stderr every :data:`PROGRESS_SECONDS`: step, steps/s, ETA, loss."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.enabled, self.start, self.total = enabled, start, total
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = (step - self.start) / (now - self.t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(f"step {step}/{self.total} ({100 * step / self.total:.0f}%)  {rate:.1f} steps/s  "
              f"ETA {eta / 60:.1f} min  loss {loss.item():.4g}", file=sys.stderr, flush=True)


def _take(batches: Iterator, n: int) -> list:
    return [next(batches) for _ in range(n)]


def _evaluate(task: Task, model, test: bool = True) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, test)
    model.train()
    return metrics


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: the trainable parameters and the buffers (a frozen
    base model is left out, so an adapter's snapshot is the adapter's size)."""
    model = unwrap(model)
    return {name: t.detach().clone() for name, t in [
        *((n, p) for n, p in model.named_parameters() if p.requires_grad),
        *model.named_buffers()]}


@contextmanager
def trained_state_set_to(model: nn.Module, weights: dict[str, torch.Tensor]):
    """``model`` with :func:`trained_state` ``weights`` copied in, its own restored on exit."""
    tensors = dict(unwrap(model).named_parameters()) | dict(unwrap(model).named_buffers())
    own = trained_state(model)

    def load(source):
        with torch.no_grad():
            for name, value in source.items():
                tensors[name].copy_(value)

    load(weights)
    try:
        yield model
    finally:
        load(own)


def train(parts: Parts, loop: LoopConfig, out: Output, state: State | None = None) -> dict:
    """Train from ``state`` (default: step 0) to ``loop.steps``; log loss, norm dynamics and
    evaluations; return the summary (``status`` ``finished``, or ``diverged`` with the step)."""
    task, model, optimizer, scheduler = parts.task, parts.model, parts.optimizer, parts.scheduler
    logger = out.logger
    state = state or State()
    run_dir = Path(out.run_dir)
    index = CoreIndex(core_groups(unwrap(model)))  # layer names as without DDP
    n_micro = loop.grad_accumulation
    batches = task.batches(state.step * n_micro)
    progress = _Progress(loop.progress and rank() == 0, state.step, loop.steps)
    unchecked: list[torch.Tensor] = []  # losses since the last look, on the device: no sync

    def checkpoint(path: Path) -> None:
        if rank() == 0:
            save_checkpoint(path, model, optimizer, state, scheduler, out.fingerprint,
                            out.settings)

    started = time.perf_counter()
    model.train()
    step = state.step
    while step < loop.steps:
        record: dict[str, Any] = {}
        logging_now = bool(loop.log_every) and step % loop.log_every == 0

        def log_norms(record=record, logging_now=logging_now):
            if logging_now:
                record.update(norm_dynamics(index))

        closure = make_closure(task, model, optimizer, _take(batches, n_micro), loop, log_norms)
        loss = optimizer.step(closure)
        if scheduler is not None:
            scheduler.step()
        unchecked.append(loss)
        done = step + 1
        evaluating = bool(loop.eval_every) and done % loop.eval_every == 0
        checkpointing = bool(loop.checkpoint_every) and done % loop.checkpoint_every == 0
        if logging_now or evaluating or checkpointing or done % CHECK_EVERY == 0 \
                or done == loop.steps:
            bad = _first_nonfinite(unchecked)
            if bad >= 0:
                state.seconds += time.perf_counter() - started
                return _diverged(task, state, done - len(unchecked) + bad, loss, logger, record)
            unchecked.clear()
        if logging_now:
            record["train/loss"] = loss.item()
            record.update(getattr(optimizer, "diagnostics", dict)())  # e.g. DAS's |lambda_k|
        if evaluating:
            metrics = _evaluate(task, model, test=not loop.test_at_best)
            record.update({f"eval/{k}": v for k, v in metrics.items()})
            if _improves(metrics.get(loop.objective), state, loop):  # strictly: ties keep the first
                state.best, state.best_step = metrics[loop.objective], done
                state.best_metrics = dict(metrics)
                if loop.test_at_best:
                    state.best_weights = trained_state(model)
                if loop.keep_best:
                    state.step = done
                    checkpoint(run_dir / "best.pt")
        if record and logger is not None:
            logger.log(record, step)
        step = done
        if checkpointing:
            if not _finite(model):  # never checkpoint a state whose next loss is non-finite
                state.seconds += time.perf_counter() - started
                return _diverged(task, state, step, torch.tensor(float("nan")), logger, {})
            state.step = step
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            checkpoint(run_dir / "checkpoint.pt")
        progress(step, loss)
    state.step = step
    state.seconds += time.perf_counter() - started
    return _finish(task, model, index, batches, state, logger, loop)


def _first_nonfinite(losses: list[torch.Tensor]) -> int:
    """Index of the first non-finite loss of ``losses``, or -1: one host-device sync."""
    finite = torch.isfinite(torch.stack(losses))
    return -1 if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def _finite(model) -> bool:
    params = [p.detach() for p in model.parameters()]
    return bool(torch.stack(torch._foreach_norm(params)).isfinite().all()) if params else True


def _improves(value, state: State, loop: LoopConfig) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if state.best is None:
        return True
    return value > state.best if loop.higher_is_better else value < state.best


def _diverged(task: Task, state: State, step: int, loss, logger, record) -> dict:
    """The summary of a run stopped at ``step``, its first non-finite loss."""
    value = float(loss.item())
    if logger is not None:
        logger.log({**record, "train/loss": value, "diverged": True}, step)
    return {"status": "diverged", "diverged_at_step": step, "steps": step,
            "seconds": state.seconds, "train/loss": value,
            **{k: None for k in task.metrics}}


def _finish(task: Task, model, index: CoreIndex, batches, state: State, logger,
            loop: LoopConfig) -> dict:
    final = _evaluate(task, model)
    model.eval()
    with torch.no_grad():
        final_loss = task.loss(model, next(batches)).item()
    model.train()
    q_final = {k: v for k, v in norm_dynamics(index).items() if k.endswith("Q")}
    summary = {"status": "finished", **final, "train/loss": final_loss, **q_final,
               "steps": state.step, "seconds": state.seconds,
               "seconds_per_step": state.seconds / max(state.step, 1)}
    if loop.test_at_best and state.best_weights is not None:
        with trained_state_set_to(model, state.best_weights):
            state.best_metrics = _evaluate(task, model)
        if not math.isclose(state.best_metrics[loop.objective], state.best, rel_tol=1e-5,
                            abs_tol=1e-7):  # evaluating the same weights must agree
            raise RuntimeError(f"{loop.objective} of the kept best weights (step "
                               f"{state.best_step}) is {state.best_metrics[loop.objective]}, "
                               f"not the {state.best} it was selected with")
    if loop.keep_best or state.best_step is not None:
        # the evaluation with the best objective (every eval_every steps, strictly better),
        # all of its metrics: the test score of the checkpoint selected on validation
        best = state.best_metrics or {loop.objective: state.best}  # older checkpoints: one
        summary.update({**{f"best/{k}": v for k, v in best.items()},
                        "best/step": state.best_step})
    if logger is not None:
        logger.log({f"eval/{k}": v for k, v in final.items()}, state.step)
    return summary


__all__ = ["CheckpointError", "DivergenceError", "LoopConfig", "Output", "Parts", "State",
           "frozen_batchnorm", "make_closure", "read_checkpoint", "restore", "save_checkpoint",
           "train", "train_step"]
