"""Helpers shared by the reproduction scripts.

* :func:`compose`: a config from ``configs/`` exactly as ``train.py`` would build it;
* :class:`Job` + :func:`run_jobs`: a grid of jobs in a process pool, resumable: a job whose
  ``summary.json`` exists is skipped (after checking it was made from the same config), and each
  job writes its summary atomically, so a crash loses no finished job;
* :func:`load_summaries`, :func:`mean_std`, :func:`fmt_mean_std`, :func:`markdown_table`,
  :func:`machine_info`: read the runs back and format tables.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from tensam.logging import atomic_write_text
from tensam.train import CONFIG_DIR

REPO = Path(CONFIG_DIR).parent
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def compose(overrides: Sequence[str]) -> DictConfig:
    """``configs/train.yaml`` composed with Hydra ``overrides`` (as on the command line)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def resolved(cfg: DictConfig) -> dict:
    """The resolved config as a plain dict, as :func:`tensam.train.run` stores it."""
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))


@dataclass(frozen=True)
class Job:
    """``fn(run_dir, *args)`` must write ``run_dir/summary.json`` (atomically) when done.

    ``config`` (optional) is what the summary's ``"config"`` entry must equal for an existing
    summary to count as this job's result; ``cost`` orders the queue (longest first).
    """

    name: str
    run_dir: Path
    fn: Callable[..., Any]
    args: tuple = ()
    config: dict | None = field(default=None, compare=False)
    cost: float = 1.0


def is_done(job: Job) -> bool:
    """True if ``job`` already has a summary; a summary of another config is an error."""
    path = Path(job.run_dir) / "summary.json"
    if not path.exists():
        return False
    stored = json.loads(path.read_text()).get("config")
    if job.config is not None and stored != job.config:
        raise ValueError(f"{path} was written by a different config than job {job.name!r}; "
                         "delete that run directory or write to another root")
    return True


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(job: Job) -> float:
    started = time.perf_counter()
    job.fn(Path(job.run_dir), *job.args)
    return time.perf_counter() - started


def run_jobs(jobs: Iterable[Job], workers: int = 2, threads: int = 1) -> dict:
    """Run the unfinished ``jobs`` on ``workers`` processes with ``threads`` threads each.

    A failing job is reported and does not stop the others. Returns a timing record
    (``seconds`` wall time, ``ran``, ``skipped``, ``failed`` job names, load averages).
    """
    jobs = list(jobs)
    todo = sorted((j for j in jobs if not is_done(j)), key=lambda j: -j.cost)
    record = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "workers": workers, "threads": threads, "jobs": len(jobs), "ran": len(todo),
              "skipped": len(jobs) - len(todo), "failed": [], "loadavg_start": os.getloadavg()}
    print(f"{len(todo)} job(s) to run, {record['skipped']} already done", flush=True)
    for key in THREAD_ENV:  # inherited by the spawned workers before numpy/torch load
        os.environ[key] = str(threads)
    started = time.perf_counter()
    if todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_call, job): job for job in todo}
            for n, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    seconds = future.result()
                except Exception:  # noqa: BLE001 - report, keep the other jobs running
                    record["failed"].append(job.name)
                    print(f"[{n}/{len(todo)}] {job.name} FAILED\n{traceback.format_exc()}",
                          flush=True)
                    continue
                print(f"[{n}/{len(todo)}] {job.name} done in {seconds:.1f} s "
                      f"(elapsed {time.perf_counter() - started:.0f} s)", flush=True)
    record["seconds"] = time.perf_counter() - started
    record["loadavg_end"] = os.getloadavg()
    return record


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (e.g. a :func:`run_jobs` timing record) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_summary(run_dir: Path, summary: dict) -> None:
    """The atomic ``summary.json`` that marks a job as done."""
    atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_summaries(root: Path, pattern: str = "**/summary.json") -> dict[tuple[str, ...], dict]:
    """Every summary under ``root``, keyed by its directory's parts relative to ``root``."""
    root = Path(root)
    return {path.parent.relative_to(root).parts: json.loads(path.read_text())
            for path in sorted(root.glob(pattern))}


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


def machine_info() -> dict:
    """CPU model and count, Python, torch and numpy versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}
