"""Formatting of the reports: mean ± std, Markdown tables, and the machine a report was made on."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tensam.logging import atomic_write_text

#: an adapter's label in tables and benchmarks, by its config's ``_target_``
ADAPTER_LABELS = {"tensam.adapters.lora.lora": "LoRA", "tensam.adapters.FLoRALinear": "FLoRA",
                  "tensam.adapters.LorettaRep": "LoRETTA_rep",
                  "tensam.adapters.LorettaTT": "LoRETTA_tt"}


def adapter_label(adapter: Mapping) -> str:
    """The label of an adapter config (:data:`ADAPTER_LABELS`; another adapter: the name of its
    class or function)."""
    target = adapter["_target_"]
    return ADAPTER_LABELS.get(target, target.rsplit(".", 1)[-1])


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


def render(name: str, **fields: Any) -> str:
    """The report template ``templates/<name>.md`` with its ``${field}`` placeholders filled in
    (:class:`string.Template`; ``$$`` is a literal dollar). A placeholder without a field, or a
    field the template does not use, is an error: a report never silently leaves a gap."""
    import string
    from importlib.resources import files

    text = files("tensam.reports").joinpath("templates", f"{name}.md").read_text()
    template = string.Template(text)
    used = {m.group("named") or m.group("braced") for m in template.pattern.finditer(text)} - {None}
    if set(fields) - used:
        raise KeyError(f"template {name}.md has no placeholder for {sorted(set(fields) - used)}")
    return template.substitute(fields)


def paired_rows(values: Mapping[str, Mapping[Any, float]], base: str,
                digits: int = 2) -> list[list]:
    """``[f"{m} - {base}", mean [95% t-interval], "yes"/"no" (does it exclude 0), n]`` for every
    method ``m`` of ``values`` (method -> seed -> value) that shares a seed with ``base``:
    the paired differences of :func:`tensam.stats.paired_difference`."""
    from tensam.stats import paired_difference

    rows = []
    for method, by_seed in values.items():
        if method == base or not set(by_seed) & set(values.get(base, {})):
            continue
        d = paired_difference(by_seed, values[base])
        rows.append([f"{method} - {base}", d.format(digits),
                     "yes" if d.excludes_zero else "no", d.n])
    return rows


#: the header of :func:`paired_rows`
PAIRED_HEADER = ["difference (points)", "mean [95% t-interval]", "excludes 0", "seeds"]
