"""Per-step cost of SAM and DAS relative to the same base optimizer (results/bench_optim.md).

    .venv/bin/python scripts/bench_optim.py              # full run (a few minutes)
    .venv/bin/python scripts/bench_optim.py --quick      # short run
    .venv/bin/python scripts/bench_optim.py --profile 200  # where DAS's opt.step() spends time

A step is ``tensam.training.train_step``, the step of ``tensam.training.train``:
``optimizer.step(closure)``, the closure zeroing the gradients and running forward and backward
(twice for SAM). Optimizers come from ``build_optimizer`` on the Hydra-composed configs, so the
benchmark times what training runs. All methods of a model live in one process on one thread and
are timed interleaved: in every block each method runs ``steps`` steps, the method order rotating
from block to block, so machine noise hits all methods alike; a method's time is the median over
blocks of its per-step mean.

``das-flat`` is DAS with the opt-in flat core buffer (``optimizer.flatten=true``,
:class:`tensam.norms.FlatCoreIndex`): its gain on each workload, measured beside the default.
``das-floor`` (Tucker) is :class:`EagerFloorDAS`: DAS's dispatches without its lambda arithmetic,
what no eager rewrite of that arithmetic can go below. ``das-wrapper`` and ``das-compiled`` come
from :mod:`tensam.bench.compiled_das`: the step contract around the base optimizer with no
scaling, and DAS bit for bit with lambda and the compensated update compiled (present when a C
compiler is).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tensam.bench.compiled_das import CompiledDAS, WrapperOnlyDAS, compiler
from tensam.logging import atomic_write_text
from tensam.optim import DAS, build_optimizer
from tensam.reports.format import machine_info
from tensam.reports.runs import config
from tensam.tasks import build_model, build_task
from tensam.tasks.base import Task
from tensam.tensorized.cp import CPLinear
from tensam.training import LoopConfig, Output, Parts, State, train, train_step

PHASES = ("total", "cpu_total")


class DeepCPRegression(Task):
    """Many small core groups: ``depth`` CPLinear layers with ReLU between them, fitted by MSE
    to random targets on one fixed batch of random inputs (a pure optimizer-overhead workload)."""

    metrics = {"loss": False}

    def __init__(self, depth: int = 60, in_shape=(4, 4), out_shape=(4, 4), rank: int = 8,
                 batch_size: int = 64, seed: int = 0):
        self.depth, self.in_shape, self.out_shape, self.rank = depth, in_shape, out_shape, rank
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, math.prod(in_shape), generator=gen)
        self.y = torch.randn(batch_size, math.prod(out_shape), generator=gen)

    def model(self) -> nn.Module:
        """The same model (seeded) at every call."""
        torch.manual_seed(self.seed)
        layers = [CPLinear(self.in_shape, self.out_shape, self.rank) for _ in range(self.depth)]
        return nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())][:-1])

    def batch(self, step: int):
        return self.x, self.y

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        return {"loss": self.loss(model, self.batch(0)).item()}


@dataclass
class Bench:
    """One task, its model and the Hydra overrides that give each method's optimizer."""

    key: str
    title: str
    task: Callable[[], Task]
    model: Callable[[Task], nn.Module]  # a fresh model (the same for every method)
    overrides: dict[str, list[str]]  # method -> overrides; the first method is the base
    targets: dict[str, float]  # method -> max ratio to base
    warmup: int
    blocks: int
    steps: int
    through_loop: tuple[str, ...] = ()  # methods stepped by tensam.training.train (LoopRunner)


class EagerFloorDAS(DAS):
    """Timing reference, not a method: DAS's step with lambda_k = 0 and none of the lambda
    arithmetic (Algorithm 2, line 5), keeping the per-core squared norms (one ``_foreach_norm``)
    and the compensated update (one ``_foreach_addcmul_`` before the base step, four ``_foreach``
    ops after it). Its ratio to the base optimizer is the floor of any eager DAS step that
    computes the norms and keeps the scaling exact."""

    def scale_factors(self) -> torch.Tensor:
        sq_core, _ = self.index.sq_norms()
        return sq_core.mul_(0.0)


def _target(cls: type) -> str:
    return f"optimizer._target_={cls.__module__}.{cls.__qualname__}"


def benches(quick: bool) -> list[Bench]:
    table1 = ["experiment=table1"]
    tucker_cfg = config(table1)
    sgd = ["optimizer/base=sgd"]
    compiled = ({"das-compiled": ["optimizer=das", _target(CompiledDAS)]}
                if compiler() is not None else {})

    def scale(full: int, short: int) -> int:
        return short if quick else full

    return [
        Bench("tucker", "(a) Tucker completion, Table 1 (COVID 438x6x11, rank (8,6,8), "
              "K = 4, 1 core group), experiment=table1, seed 0 (split 0, uniform init)",
              lambda: build_task(tucker_cfg["task"]),
              lambda task: build_model(tucker_cfg["model"], task),
              {"base": table1 + ["optimizer=adamw"], "sam": table1 + ["optimizer=sam"],
               "das": table1 + ["optimizer=das"],
               "das-flat": table1 + ["optimizer=das", "optimizer.flatten=true"],
               "das-floor": table1 + ["optimizer=das", _target(EagerFloorDAS)],
               "das-wrapper": table1 + ["optimizer=das", _target(WrapperOnlyDAS)],
               **{m: table1 + o for m, o in compiled.items()},
               "base-loop": table1 + ["optimizer=adamw"]},
              {"sam": 2.05, "das": 1.10},
              warmup=scale(300, 50), blocks=scale(60, 8), steps=scale(200, 50),
              through_loop=("base-loop",)),
        Bench("cp", "(b) 60 CPLinear layers (4,4)->(4,4), rank 8, ReLU; K = 4, 60 core groups "
              "(240 cores); batch 64, MSE to random targets, seed 0; base optimizer/base=sgd",
              DeepCPRegression, DeepCPRegression.model,
              {"base": ["optimizer=sgd"], "sam": ["optimizer=sam"] + sgd,
               "das": ["optimizer=das"] + sgd,
               "das-flat": ["optimizer=das", "optimizer.flatten=true"] + sgd,
               **{m: o + sgd for m, o in compiled.items()}},
              {"sam": 2.05, "das-flat": 1.05},
              warmup=scale(20, 5), blocks=scale(30, 5), steps=scale(20, 5)),
    ]


class Runner:
    """One method's model and optimizer, stepped exactly as ``tensam.training.train`` does."""

    def __init__(self, task: Task, model: nn.Module, optimizer_cfg: dict, total_steps: int):
        self.task, self.model = task, model
        self.optimizer = build_optimizer(optimizer_cfg, model, total_steps=total_steps)
        self.step_index, self.losses = 0, []

    def run(self, steps: int) -> dict[str, float]:
        """Run ``steps`` training steps; seconds per step: wall-clock (``total``) and the
        thread's CPU time (``cpu_total``), which excludes time the thread was descheduled by
        other jobs on the machine."""
        start, cpu_start = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            loss = train_step(self.task, self.model, self.optimizer,
                              self.task.batch(self.step_index))
            self.step_index += 1
        total, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        self.losses.append(loss.item())
        return {"total": total / steps, "cpu_total": cpu / steps}


class LoopRunner(Runner):
    """The same steps through :func:`tensam.training.train`, so the ratio to ``base`` is the
    loop's own per-step work (its divergence checks, closure, logging decisions; each block also
    pays one final evaluation, as a run does once)."""

    def __init__(self, *args):
        super().__init__(*args)
        # nothing is written there: no checkpoints, no logger
        self.out = Output(Path(tempfile.gettempdir()))

    def run(self, steps: int) -> dict[str, float]:
        start, cpu_start = time.perf_counter(), time.thread_time()
        summary = train(Parts(self.task, self.model, self.optimizer),
                        LoopConfig(steps=self.step_index + steps, log_every=0), self.out,
                        State(step=self.step_index))
        total, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        self.step_index += steps
        self.losses.append(summary["train/loss"])
        return {"total": total / steps, "cpu_total": cpu / steps}


def quartiles(x: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(x, n=4)
    return q[0], q[2]


def measure(bench: Bench) -> dict:
    """Interleaved timing of every method of ``bench``; medians over blocks and ratios to base."""
    methods = list(bench.overrides)
    total_steps = bench.warmup + bench.blocks * bench.steps
    task = bench.task()
    configs = {m: config(o)["optimizer"] for m, o in bench.overrides.items()}
    runners = {m: (LoopRunner if m in bench.through_loop else Runner)(
        task, bench.model(task), configs[m], total_steps) for m in methods}
    for runner in runners.values():
        runner.run(bench.warmup)
        runner.losses.clear()
    blocks = {m: {p: [] for p in PHASES} for m in methods}
    for b in range(bench.blocks):
        for m in methods[b % len(methods):] + methods[: b % len(methods)]:
            for phase, seconds in runners[m].run(bench.steps).items():
                blocks[m][phase].append(seconds * 1e3)
    base = methods[0]
    out = {}
    for m in methods:
        med = {p: statistics.median(blocks[m][p]) for p in PHASES}
        paired = [t / tb for t, tb in zip(blocks[m]["total"], blocks[base]["total"], strict=True)]
        ratio = med["total"] / statistics.median(blocks[base]["total"])
        cpu_ratio = med["cpu_total"] / statistics.median(blocks[base]["cpu_total"])
        target = bench.targets.get(m)
        losses = runners[m].losses
        out[m] = {"ms_per_step": med, "ratio": ratio, "cpu_ratio": cpu_ratio,
                  "paired_ratio_iqr": quartiles(paired),
                  "target": target, "pass": None if target is None else ratio <= target,
                  "optimizer": configs[m], "loss_first_block": losses[0],
                  "loss_last_block": losses[-1], "blocks_ms": blocks[m]}
    return out


def markdown(report: dict) -> str:
    m, cfg = report["machine"], report["settings"]
    lines = [
        "# Optimizer overhead: SAM and DAS vs. the same base optimizer",
        "",
        f"Command: `{report['command']}`  ",
        f"Date (UTC): {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cpus']} CPU cores, torch {m['torch']} (CPU), "
        f"torch threads = {m['threads']}, Python {m['python']}.  ",
        f"Load average before / after: {report['load_before']} / {report['load_after']}. "
        "The machine may have been shared with other jobs during the run; interleaving spreads "
        "that noise over all methods, but absolute times are only indicative.",
        "",
        "A step = `tensam.training.train_step`, the step of `tensam.training.train`: "
        "`optimizer.step(closure)`, the closure zeroing the gradients and running forward and "
        "backward (twice for SAM). Optimizers are built by "
        "`tensam.optim.build_optimizer` from the composed Hydra configs listed below. All methods "
        "of a model run in one process, interleaved: each block runs every method for `steps` "
        "steps (order rotating per block); the time of a method is the median over blocks of its "
        "mean step time; ratio = that median / the base optimizer's median. The IQR column is the "
        "spread of the per-block (paired) ratios. Warm-up steps are discarded. Times are "
        "wall-clock and decide PASS/FAIL; the CPU-time ratio (same medians over the thread's CPU "
        "time, which excludes time the process waited for a core) is a cross-check on a loaded "
        "machine. A method ending in `-loop` runs the same steps through `tensam.training.train` "
        "(the whole training loop), so its ratio is the loop's own per-step cost. "
        "Timing references, not methods: `das-floor` is DAS's norms and compensated update "
        "without its lambda arithmetic; `das-wrapper` is DAS's wrapper around the base "
        "optimizer with no scaling (the step contract's own cost); `das-compiled` is DAS bit "
        "for bit with lambda and the compensated update in two compiled C calls and torch's "
        "norms (`tensam.bench.compiled_das`; tested bit-identical to DAS).",
        "",
    ]
    for key, bench in report["benches"].items():
        s = cfg[key]
        lines += [f"## {s['title']}", "",
                  f"Warm-up {s['warmup']} steps per method, then {s['blocks']} blocks x "
                  f"{s['steps']} steps per method.", "",
                  "| method | optimizer config | ms/step | ratio to base | paired ratio IQR | "
                  "CPU-time ratio | target | result |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for method, r in bench.items():
            ms, lo_hi = r["ms_per_step"], r["paired_ratio_iqr"]
            target = "" if r["target"] is None else f"<= {r['target']:.2f}x"
            verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
            lines.append(
                f"| {method} | `{' '.join(s['overrides'][method])}` | {ms['total']:.3f} | "
                f"{r['ratio']:.3f}x | {lo_hi[0]:.3f}-{lo_hi[1]:.3f} | {r['cpu_ratio']:.3f}x | "
                f"{target} | {verdict} |")
        lines += ["", "Composed optimizer configs: " + "; ".join(
            f"{m} `{json.dumps(r['optimizer'])}`" for m, r in bench.items()) + ".", "",
                  "Train loss after the first / last timed block (the runs stayed finite; (b) is "
                  "a timing workload, not a learning task): "
                  + "; ".join(f"{m} {r['loss_first_block']:.4g} / {r['loss_last_block']:.4g}"
                              for m, r in bench.items()) + ".", ""]
    lines += ["Raw per-block times, configs and settings: `bench_optim.json` next to this file.",
              ""]
    return "\n".join(lines)


def profile(bench: Bench, steps: int) -> None:
    """Top ops (torch.profiler) and Python functions (cProfile) of ``steps`` opt.step() calls of
    the base optimizer and DAS (one-pass methods), gradients fixed from one training step."""
    task = bench.task()
    for method in ("base", "das"):
        runner = Runner(task, bench.model(task), config(bench.overrides[method])["optimizer"],
                        steps)
        runner.run(bench.warmup)  # leaves the last step's gradients on .grad
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                runner.optimizer.step()
        print(f"\n=== {bench.key} / {method}: {steps} x opt.step(), "
              f"{(time.perf_counter() - start) / steps * 1e3:.3f} ms/step under the profiler")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        cprof = cProfile.Profile()
        cprof.enable()
        for _ in range(steps):
            runner.optimizer.step()
        cprof.disable()
        pstats.Stats(cprof).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (few blocks)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N opt.step() calls of base and DAS instead of timing")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="directory for bench_optim.md and bench_optim.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        for bench in benches(quick=True):
            profile(bench, args.profile)
        return
    load_before = os.getloadavg()
    report = {"command": " ".join([".venv/bin/python", "scripts/bench_optim.py", *sys.argv[1:]]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "machine": machine_info(), "quick": args.quick, "settings": {}, "benches": {}}
    for bench in benches(args.quick):
        report["settings"][bench.key] = {"title": bench.title, "overrides": bench.overrides,
                                         "warmup": bench.warmup, "blocks": bench.blocks,
                                         "steps": bench.steps}
        report["benches"][bench.key] = measure(bench)
        print(json.dumps({m: {"ms": round(r["ms_per_step"]["total"], 4),
                              "ratio": round(r["ratio"], 3), "cpu_ratio": round(r["cpu_ratio"], 3),
                              "pass": r["pass"]}
                          for m, r in report["benches"][bench.key].items()}), flush=True)
    report["load_before"] = " ".join(f"{x:.2f}" for x in load_before)
    report["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    atomic_write_text(args.out / "bench_optim.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / "bench_optim.md", markdown(report))


if __name__ == "__main__":
    main()
