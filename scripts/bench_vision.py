"""Per-step cost of tensorized ResNets and of SAM/DAS on them (results/bench_vision.md).

    .venv/bin/python scripts/bench_vision.py                   # CPU, 1 thread (a few minutes)
    .venv/bin/python scripts/bench_vision.py --device cuda     # results/bench_vision_gpu.md

Targets (CPU, TR-ResNet-20 rank 10, batch 128): TR step <= 1.25x the dense ResNet-20 step, DAS
<= 1.05x SGD, SAM <= 2.05x SGD (the paper's Table 2 runtime row has DAS at 1.38x and SAM at 2.3x
SGD on its GPU), and the data pipeline delivers >= 10x the images per second a step consumes.

A step is ``tensam.training.train_step`` on one CIFAR-shaped batch already on the device (random
uint8 images through the task's normalisation and augmentation, so the numbers do not depend on
the data set being at hand). All configurations live in one process and are timed interleaved:
each block runs every configuration for ``steps`` steps, the order rotating from block to block;
a configuration's time is the median over blocks of its per-step mean, and ratios are paired per
block. On CUDA every block ends with a synchronisation.
"""

from __future__ import annotations

import os
import statistics

import torch
from _common import bench_machine, bench_parser, interleaved_times, markdown_table, write_bench

from tensam.config import compose
from tensam.models import ResNet
from tensam.optim import build_optimizer
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


def configurations(device: str) -> dict[str, tuple[dict, str]]:
    """name -> (model kwargs, optimizer); the first is the reference of the TR ratio."""
    out = {"dense ResNet-20 SGD": ({"depth": 20, "conv": "dense"}, "SGD")}
    out.update({f"TR-ResNet-20 r10 {o}": ({"depth": 20, "conv": "tr", "rank": 10}, o)
                for o in OPTIMIZERS})
    if device == "cuda":
        out["dense ResNet-32 SGD"] = ({"depth": 32, "conv": "dense"}, "SGD")
        out.update({f"TR-ResNet-32 r15 {o}": ({"depth": 32, "conv": "tr", "rank": 15}, o)
                    for o in OPTIMIZERS})
    return out


#: (configuration, reference configuration, max ratio)
TARGETS = [("TR-ResNet-20 r10 SGD", "dense ResNet-20 SGD", 1.25),
           ("TR-ResNet-20 r10 DAS", "TR-ResNet-20 r10 SGD", 1.05),
           ("TR-ResNet-20 r10 SAM", "TR-ResNet-20 r10 SGD", 2.05),
           ("TR-ResNet-32 r15 DAS", "TR-ResNet-32 r15 SGD", None),
           ("TR-ResNet-32 r15 SAM", "TR-ResNet-32 r15 SGD", None),
           ("TR-ResNet-32 r15 SGD", "dense ResNet-32 SGD", None)]


def measure(device: torch.device, batch_size: int, warmup: int, blocks: int, steps: int):
    task = ImageClassification(RandomImages(), batch_size=batch_size).to(device)
    batch = next(task.batches())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = {}
    for name, (model_kw, opt) in configurations(device.type).items():
        torch.manual_seed(0)
        model = ResNet(**model_kw, input_shape=(3, 32, 32), num_classes=10).to(device)
        opt_cfg = compose(*OPTIMIZERS[opt], "optimizer/base=sgd", keys=("optimizer",))
        optimizer = build_optimizer(opt_cfg["optimizer"], model,
                                    total_steps=warmup + blocks * steps)
        runs[name] = (model, optimizer)
        for _ in range(warmup):
            train_step(task, model, optimizer, batch)
    losses = {}

    def step(name):
        model, optimizer = runs[name]
        return lambda: losses.__setitem__(name, train_step(task, model, optimizer, batch))

    times = interleaved_times({name: step(name) for name in runs}, blocks, steps, sync)
    diverged = [n for n, loss in losses.items() if not torch.isfinite(loss)]
    if diverged:
        raise RuntimeError(f"benchmark runs diverged: {diverged}")
    return times, pipeline_throughput(task, steps=20)


def report(times: dict, pipeline: float, batch_size: int, args, machine: dict) -> str:
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
        f"pad-4 crop and flip on the device): {pipeline:.0f} images/s.", ""])


def main() -> None:
    parser = bench_parser(__doc__, steps=4, threads=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    times, pipeline = measure(device, args.batch_size, args.warmup, args.blocks, args.steps)
    machine = bench_machine("bench_vision.py", args.threads, load, device)
    write_bench("bench_vision", args.out, device,
                report(times, pipeline, args.batch_size, args, machine),
                {"machine": machine, "times_s": times, "pipeline_images_per_s": pipeline})


if __name__ == "__main__":
    main()
