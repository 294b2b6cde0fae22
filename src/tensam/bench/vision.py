"""Per-step cost of tensorized ResNets and of SAM/DAS on them (results/bench_vision.md).

    .venv/bin/python scripts/bench_vision.py                   # CPU, 1 thread (a few minutes)
    .venv/bin/python scripts/bench_vision.py --device cuda     # results/bench_vision_gpu.md

Targets (CPU, TR-ResNet-20 rank 10, batch 128): TR step <= 1.25x the dense ResNet-20 step, DAS
<= 1.05x SGD, SAM <= 2.05x SGD (the paper's Table 2 runtime row has DAS at 1.38x and SAM at 2.3x
SGD on its GPU), and the data pipeline delivers >= 10x the images per second a step consumes.

**The fast CPU path** (rows marked ``fast``): bf16 autocast (``precision=bf16``; parameters,
gradients and the optimizers' arithmetic stay fp32) and channels_last activations
(``model.channels_last=true``) on ``--fast-threads`` threads (default 2, the whole machine),
timed in the same interleaved blocks as the fp32 rows on ``--threads`` (default 1). Target: a
run on the fast path trains >= 2.5x the images per second of the fp32 one-thread run. On CPU,
``--side-by-side`` also times two fast runs of one thread each in two processes at once, the
alternative use of two cores, and reports whether one two-thread run or two one-thread runs
get through more images per second in total (the Makefile's CPU targets run one at a time).

A step is ``tensam.training.train_step`` on one CIFAR-shaped batch already on the device (random
uint8 images through the task's normalisation and augmentation, so the numbers do not depend on
the data set being at hand). All configurations live in one process and are timed interleaved:
each block runs every configuration for ``steps`` steps, the order rotating from block to block;
a configuration's time is the median over blocks of its per-step mean, and ratios are paired per
block. On CUDA every block ends with a synchronisation.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import torch

from tensam.bench.common import bench_machine, bench_parser, interleaved_times, write_bench
from tensam.config import compose
from tensam.models import ResNet
from tensam.optim import build_optimizer
from tensam.reports.format import markdown_table
from tensam.tasks import ImageClassification
from tensam.tasks.vision import pipeline_throughput
from tensam.training import train_step

#: label -> the optimizer config's overrides, over the project's SGD (lr 0.1, momentum 0.9)
OPTIMIZERS = {"SGD": ["optimizer=sgd"], "SAM": ["optimizer=sam", "optimizer.rho=0.05"],
              "DAS": ["optimizer=das", "optimizer.alpha=0.1"]}


class RandomImages:
    """CIFAR-10-shaped uint8 images and labels (what :class:`tensam.data.CIFAR10` hands the
    task), drawn once from a seeded generator."""

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    num_classes, input_shape = 10, (3, 32, 32)

    def __init__(self, n: int = 2048, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        labels = torch.randint(10, (n,), generator=gen)
        self.train = self.eval = torch.utils.data.TensorDataset(images, labels)

    def info(self) -> dict:
        return {}


#: the fast CPU path: the run's precision and the model's memory format (module docstring)
FAST = {"precision": "bf16", "channels_last": True}
TR20 = {"depth": 20, "conv": "tr", "rank": 10}


def configurations(device: str) -> dict[str, tuple[dict, str, bool]]:
    """name -> (model kwargs, optimizer, fast path?); the first is the reference of the TR
    ratio."""
    out = {"dense ResNet-20 SGD": ({"depth": 20, "conv": "dense"}, "SGD", False)}
    out.update({f"TR-ResNet-20 r10 {o}": (TR20, o, False) for o in OPTIMIZERS})
    if device == "cpu":
        out["dense ResNet-20 SGD fast"] = ({"depth": 20, "conv": "dense"}, "SGD", True)
        out.update({f"TR-ResNet-20 r10 {o} fast": (TR20, o, True) for o in OPTIMIZERS})
    if device == "cuda":
        out["dense ResNet-32 SGD"] = ({"depth": 32, "conv": "dense"}, "SGD", False)
        out.update({f"TR-ResNet-32 r15 {o}": ({"depth": 32, "conv": "tr", "rank": 15}, o, False)
                    for o in OPTIMIZERS})
    return out


#: (configuration, reference configuration, max ratio)
TARGETS = [("TR-ResNet-20 r10 SGD", "dense ResNet-20 SGD", 1.25),
           ("TR-ResNet-20 r10 DAS", "TR-ResNet-20 r10 SGD", 1.05),
           ("TR-ResNet-20 r10 SAM", "TR-ResNet-20 r10 SGD", 2.05),
           ("TR-ResNet-32 r15 DAS", "TR-ResNet-32 r15 SGD", None),
           ("TR-ResNet-32 r15 SAM", "TR-ResNet-32 r15 SGD", None),
           ("TR-ResNet-32 r15 SGD", "dense ResNet-32 SGD", None),
           ("TR-ResNet-20 r10 DAS fast", "TR-ResNet-20 r10 SGD fast", 1.05),
           ("TR-ResNet-20 r10 SAM fast", "TR-ResNet-20 r10 SGD fast", 2.05)]
#: (fast configuration, its fp32 counterpart, min speed-up in images/s)
SPEEDUPS = [("TR-ResNet-20 r10 SGD fast", "TR-ResNet-20 r10 SGD", 2.5),
            ("TR-ResNet-20 r10 DAS fast", "TR-ResNet-20 r10 DAS", None),
            ("TR-ResNet-20 r10 SAM fast", "TR-ResNet-20 r10 SAM", None),
            ("dense ResNet-20 SGD fast", "dense ResNet-20 SGD", None)]


def build_run(model_kw: dict, opt: str, fast: bool, device, total_steps: int):
    """(model, optimizer) of a configuration, seeded alike."""
    torch.manual_seed(0)
    model = ResNet(**model_kw, input_shape=(3, 32, 32), num_classes=10,
                   channels_last=fast and FAST["channels_last"]).to(device)
    opt_cfg = compose(*OPTIMIZERS[opt], "optimizer/base=sgd", keys=("optimizer",))
    return model, build_optimizer(opt_cfg["optimizer"], model, total_steps=total_steps)


def measure(device: torch.device, batch_size: int, warmup: int, blocks: int, steps: int,
            threads: int, fast_threads: int):
    task = ImageClassification(RandomImages(), batch_size=batch_size).to(device)
    batch = next(task.batches())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = {}
    for name, (model_kw, opt, fast) in configurations(device.type).items():
        model, optimizer = build_run(model_kw, opt, fast, device, warmup + blocks * steps)
        runs[name] = (model, optimizer, "bf16" if fast else "fp32",
                      fast_threads if fast else threads)
        torch.set_num_threads(runs[name][3])
        for _ in range(warmup):
            train_step(task, model, optimizer, batch, precision=runs[name][2])
    losses = {}

    def step(name):
        model, optimizer, precision, n_threads = runs[name]

        def one():
            torch.set_num_threads(n_threads)
            losses[name] = train_step(task, model, optimizer, batch, precision=precision)
        return one

    times = interleaved_times({name: step(name) for name in runs}, blocks, steps, sync)
    diverged = [n for n, loss in losses.items() if not torch.isfinite(loss)]
    if diverged:
        raise RuntimeError(f"benchmark runs diverged: {diverged}")
    return times, pipeline_throughput(task, steps=20)


def _side_by_side_worker(args: tuple) -> float:
    """Seconds per fast SGD step of TR-ResNet-20 r10 on one thread (run in its own process)."""
    batch_size, warmup, steps = args
    torch.set_num_threads(1)
    task = ImageClassification(RandomImages(), batch_size=batch_size)
    batch = next(task.batches())
    model, optimizer = build_run(TR20, "SGD", True, torch.device("cpu"), warmup + steps)
    for _ in range(warmup):
        train_step(task, model, optimizer, batch, precision=FAST["precision"])
    start = time.perf_counter()
    for _ in range(steps):
        train_step(task, model, optimizer, batch, precision=FAST["precision"])
    return (time.perf_counter() - start) / steps


def side_by_side(batch_size: int, warmup: int, steps: int, processes: int = 2) -> list[float]:
    """Seconds per step of ``processes`` one-thread fast runs running at the same time."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(_side_by_side_worker, [(batch_size, warmup, steps)] * processes)


def report(times: dict, pipeline: float, batch_size: int, args, machine: dict,
           parallel: list[float] | None) -> str:
    median = {n: statistics.median(t) for n, t in times.items()}
    rows = [[n, f"{1e3 * median[n]:.1f}", f"{batch_size / median[n]:.0f}"] for n in times]
    checks = []
    for name, ref, target in TARGETS:
        if name in times and ref in times:
            paired = [a / b for a, b in zip(times[name], times[ref], strict=True)]
            ratio = statistics.median(paired)
            verdict = "" if target is None else ("PASS" if ratio <= target else "FAIL")
            checks.append([name, ref, f"{ratio:.3f}x", f"{min(paired):.3f}-{max(paired):.3f}",
                           "" if target is None else f"<= {target}x", verdict])
    for name, ref, target in SPEEDUPS:
        if name in times and ref in times:
            paired = [b / a for a, b in zip(times[name], times[ref], strict=True)]
            ratio = statistics.median(paired)
            verdict = "" if target is None else ("PASS" if ratio >= target else "FAIL")
            checks.append([f"{name} (images/s)", f"{ref} (images/s)", f"{ratio:.2f}x",
                           f"{min(paired):.2f}-{max(paired):.2f}",
                           "" if target is None else f">= {target}x", verdict])
    consumed = batch_size / median["TR-ResNet-20 r10 SGD"]
    checks.append(["data pipeline (images/s)", "TR-ResNet-20 r10 SGD step (images/s)",
                   f"{pipeline / consumed:.1f}x", "", ">= 10x",
                   "PASS" if pipeline >= 10 * consumed else "FAIL"])
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpus']} cores)"
    return "\n".join([
        f"# Tensorized ResNets: step time on {args.device.upper()}", "",
        f"Command: `{machine['command']}`  ", f"Date (UTC): {machine['date']}  ",
        f"Device: {device}; torch {machine['torch']}, torch threads {machine['threads']}; "
        f"load average before / after: {machine['load']}.  ",
        f"Batch {batch_size}, CIFAR-shaped images on the device; {args.warmup} warm-up steps, "
        f"then {args.blocks} interleaved blocks of {args.steps} steps per configuration; "
        "median over blocks. SGD: lr 0.1, momentum 0.9, weight decay 5e-4; SAM rho 0.05; DAS "
        "alpha 0.1 (over the same SGD).", "",
        markdown_table(["configuration", "ms/step", "images/s"], rows),
        markdown_table(["configuration", "reference", "ratio (median of paired blocks)",
                        "range over blocks", "target", "result"], checks),
        f"Data pipeline (`tensam.tasks.vision.pipeline_throughput`: indexing, normalisation, "
        f"pad-4 crop and flip on the device): {pipeline:.0f} images/s.", "",
        *(_parallel_lines(parallel, median, batch_size, args) if parallel else [])])


def _parallel_lines(parallel: list[float], median: dict, batch_size: int, args) -> list[str]:
    """Whole-machine throughput: one run on ``--fast-threads`` threads vs one-thread runs side
    by side."""
    fast = median["TR-ResNet-20 r10 SGD fast"]
    one_run, together = batch_size / fast, sum(batch_size / t for t in parallel)
    better = (f"one {args.fast_threads}-thread run" if one_run >= together
              else f"{len(parallel)} one-thread runs side by side")
    return [f"Fast path, whole machine: one run on {args.fast_threads} threads "
            f"{one_run:.0f} images/s; {len(parallel)} one-thread runs side by side (separate "
            f"processes, {', '.join(f'{1e3 * t:.0f}' for t in parallel)} ms/step) "
            f"{together:.0f} images/s in total. More images per second in total: {better}; "
            f"a single run finishes {parallel[0] / fast:.2f}x sooner on {args.fast_threads} "
            "threads than on one beside another.", ""]


def main() -> None:
    parser = bench_parser(__doc__, steps=4, threads=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fast-threads", type=int, default=2)
    parser.add_argument("--side-by-side", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    times, pipeline = measure(device, args.batch_size, args.warmup, args.blocks, args.steps,
                              args.threads, args.fast_threads)
    torch.set_num_threads(args.threads)
    parallel = (side_by_side(args.batch_size, args.warmup, args.blocks * args.steps)
                if args.side_by_side and device.type == "cpu" else None)
    machine = bench_machine("bench_vision.py", args.threads, load, device)
    write_bench("bench_vision", args.out, device,
                report(times, pipeline, args.batch_size, args, machine, parallel),
                {"machine": machine, "times_s": times, "pipeline_images_per_s": pipeline,
                 "side_by_side_s_per_step": parallel, "fast_threads": args.fast_threads})


if __name__ == "__main__":
    main()
