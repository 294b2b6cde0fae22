"""Helpers shared by the table/figure builders and analyses in ``scripts/``.

The training grids are Hydra multiruns (see the Makefile); these helpers read their run
directories back and format tables:

* :func:`config`, :func:`build`: a config composed exactly as ``train.py`` would, and its task and
  model (for analyses that are not training runs);
* :func:`cached`: an analysis result stored as JSON next to the runs, recomputed only when its
  settings change;
* :func:`load_summaries`, :func:`read_jsonl` (from :mod:`tensam.reports`, which also groups
  runs by their stored settings and counts diverged runs apart), :func:`method_of`,
  :func:`mean_std`, :func:`fmt_mean_std`, :func:`markdown_table`, :func:`machine_info`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tensam.config import compose
from tensam.logging import atomic_write_text
from tensam.reports import (  # noqa: F401 - the builders' readers
    load_summaries,
    method_of,
    optimizer_settings,
    read_jsonl,
)
from tensam.tasks import build_model, build_task
from tensam.train import seed_everything

REPO = Path(__file__).resolve().parents[1]


def config(overrides: Sequence[str]) -> dict:
    """The resolved root config under Hydra ``overrides`` (:func:`tensam.config.compose`)."""
    return compose(*overrides)


def build(cfg: Mapping):
    """(task, model) of a resolved config, seeded as :func:`tensam.train.run` does."""
    seed_everything(int(cfg["seed"]))
    task = build_task(cfg["task"], cfg["model"].get("pretrained"))
    return task, build_model(cfg["model"], task)


def cached(path: Path, settings: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``'s result, stored in ``path`` with its ``settings``; a stored result is
    reused only if it was made with the same settings (an analysis, not a training run)."""
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            return stored
    result = {**compute(), "settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return result


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



#: which evaluation of a run a table reports (``--checkpoint``)
CHECKPOINTS = ("best", "last")


def reported(summary: Mapping, checkpoint: str = "best") -> dict:
    """``summary`` with the metrics of the evaluation it reports, and ``"checkpoint"`` saying
    which: with ``checkpoint="best"``, for a run evaluated every ``eval_every`` steps, the
    evaluation with the best objective (its ``best/<metric>`` keys; ``"best@<step>"``): LM-BFF's,
    MeZO's and LoRETTA's best checkpoint on validation, whose test score they report; otherwise
    (``"last"``, a run without evaluations during training, or one from before the summaries kept
    every metric of it) the final evaluation (``"last"``)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r} is not one of {list(CHECKPOINTS)}")
    best = {k.removeprefix("best/"): v for k, v in summary.items()
            if k.startswith("best/") and k != "best/step"}
    if (checkpoint == "best" and summary.get("best/step") is not None
            and set(best) - {summary.get("objective")}):
        return {**summary, **best, "checkpoint": f"best@{summary['best/step']}"}
    return {**summary, "checkpoint": "last"}


def best_on_validation(summaries: Iterable[Mapping], group: Callable[[Mapping], Any],
                       metric: Callable[[Mapping], str],
                       checkpoint: str = "best") -> dict[Any, dict]:
    """Per ``group(summary)``, the finished run with the best validation value of
    ``metric(summary)`` (the paper's protocol: a grid per data seed, the configuration with the
    best validation score reports its test score); a group of one run is that run. Every run is
    read as :func:`reported` reads it: its best checkpoint on validation where it has one (the
    reference code's per-run selection), so both the validation score compared here and the test
    score a table prints are that checkpoint's; the runs are returned so read."""
    best: dict[Any, dict] = {}
    for s in summaries:
        if s.get("status") != "finished":
            continue
        s = reported(s, checkpoint)
        key, value = group(s), s.get(metric(s))
        if value is not None and (key not in best or value > best[key][metric(s)]):
            best[key] = s
    return best


def checkpoint_note(runs: Iterable[Mapping]) -> str:
    """Which evaluation of each of ``runs`` (read by :func:`reported`) a table shows, in words."""
    runs = list(runs)
    chosen = [r for r in runs if r["checkpoint"] != "last"]
    if not chosen:
        return "each run's final evaluation"
    every = "/".join(sorted({str(r["config"].get("eval_every")) for r in chosen}))
    objective = "/".join(sorted({str(r.get("objective")) for r in chosen}))
    note = (f"each run's evaluation with the best {objective} (every {every} steps, the "
            "reference code's best checkpoint)")
    if len(chosen) < len(runs):
        note += (f" for {len(chosen)} of {len(runs)} runs, the final evaluation for the others "
                 "(no evaluation during training)")
    return note


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out: Path, lines: list[str], summaries: Mapping, note: str) -> None:
    """Write ``lines`` to ``out`` as a Markdown report, closed by the machine, the training time
    of all ``summaries`` together and ``note`` on how to read their step times."""
    machine = machine_info()
    hours = sum(s["seconds"] for s in summaries.values()) / 3600
    footer = (f"Machine: {machine['cpu']} ({machine['cpus']} CPUs), torch {machine['torch']}; "
              f"training time of all runs together: {hours:.2f} h. s/step is each run's wall "
              f"time per step (SAM's two passes included) {note}")
    atomic_write_text(out, "\n".join([*lines, footer]) + "\n")
    print(f"wrote {out}")


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
    import torch

    gpu = torch.device(device).type == "cuda"
    out = out or REPO / "results" / f"{name}{'_gpu' if gpu else ''}.md"
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    print(text)


def bench_machine(script: str, threads: int, load_before: tuple, device) -> dict:
    """:func:`machine_info` of a benchmark: its command line, the date, the load average before
    and after it, and the GPU's name when ``device`` is CUDA."""
    import datetime
    import sys

    import torch

    machine = {**machine_info(), "threads": threads,
               "command": " ".join([".venv/bin/python", f"scripts/{script}", *sys.argv[1:]]),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
               "load": " / ".join(" ".join(f"{x:.2f}" for x in load)
                                  for load in (load_before, os.getloadavg()))}
    if torch.device(device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def machine_info() -> dict:
    """CPU model and count, torch threads, Python, torch and numpy versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}
