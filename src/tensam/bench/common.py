"""What every benchmark shares: interleaved timing, the command line, writing the result beside
the machine it was measured on, and the replay of a step's ATen calls (the floor of any driver
of the same kernels)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tensam.logging import atomic_write_text
from tensam.reports.format import machine_info

RESULTS = Path("results")


def interleaved_times(runs: Mapping[str, Callable[[], Any]], blocks: int, steps: int,
                      sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each of ``runs`` (name -> one training step), measured in ``blocks``
    blocks of ``steps`` calls, the configurations interleaved and rotated from block to block so
    that machine noise hits all alike; one time per block and configuration."""
    times, names = {name: [] for name in runs}, list(runs)
    for b in range(blocks):
        for name in names[b % len(names):] + names[: b % len(names)]:
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def bench_parser(doc: str, steps: int, threads: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: --device, --warmup, --blocks, --steps, --threads,
    --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def write_bench(name: str, out: Path | None, device, text: str, data: dict) -> None:
    """``text`` to ``out`` (default ``results/<name>.md``, ``<name>_gpu.md`` on CUDA) and
    ``data`` beside it as JSON."""
    gpu = torch.device(device).type == "cuda"
    out = out or RESULTS / f"{name}{'_gpu' if gpu else ''}.md"
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    print(text)


def bench_machine(script: str, threads: int, load_before: tuple, device) -> dict:
    """:func:`machine_info` of a benchmark: its command line, the date, the load average before
    and after it, and the GPU's name when ``device`` is CUDA."""
    import datetime
    import sys

    machine = {**machine_info(), "threads": threads,
               "command": " ".join([".venv/bin/python", f"scripts/{script}", *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
               "load": " / ".join(" ".join(f"{x:.2f}" for x in load)
                                  for load in (load_before, os.getloadavg()))}
    if torch.device(device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


class AtenRecorder(TorchDispatchMode):
    """Every ATen call made while active, below autograd (forward, backward and optimizer
    alike), as ``(op, args, kwargs)`` holding the very tensors it was called with."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "profiler":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def record_step(step) -> list[tuple]:
    """The ATen calls of one call of ``step``."""
    with AtenRecorder() as recorder:
        step()
    return recorder.calls


@torch.no_grad()
def replay(calls: list[tuple]) -> None:
    """Run recorded calls again on the recorded tensors: the same kernels on the same shapes and
    layouts, none of the Python around them (a timing tool: the values are not a step's)."""
    for func, args, kwargs in calls:
        func(*args, **kwargs)
