"""Keep the records of a study's runs with the results: every run's ``summary.json`` and
``metrics.jsonl`` under ``SRC`` copied to the same place under ``DST``, without checkpoints.

    python scripts/archive_runs.py runs/vision_cpu/noise_cpu results/runs/noise_cpu

Run directories (``runs/``) are not committed; their records are small (a summary holds the run's
full config, its settings and fingerprint, and its final and best metrics), so committing them
lets anyone rebuild a table from a clone (``make_table2.py --root results/runs/noise_cpu``) and
audit every number. Where a config says where data lives on this machine (the leaves of
:data:`tensam.config.NOT_TRAJECTORY_LEAVES`: ``root``, ``cache_dir``), the copy says null: those
keys are not settings of the run, so its fingerprint is unchanged. Copying the records back into a
run directory lets ``train.py`` skip those runs when the study is resumed elsewhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tensam.config import NOT_TRAJECTORY_LEAVES
from tensam.logging import atomic_write_text

RECORDS = ("summary.json", "metrics.jsonl")
#: leaves that name a place on this machine (NOT_TRAJECTORY_LEAVES minus the worker count)
PLACES = tuple(k for k in NOT_TRAJECTORY_LEAVES if k in ("root", "cache_dir"))


def without_places(node: Any) -> Any:
    """``node`` with every :data:`PLACES` leaf that holds a string set to None."""
    if isinstance(node, dict):
        return {k: None if k in PLACES and isinstance(v, str) else without_places(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [without_places(v) for v in node]
    return node


def archive(src: Path, dst: Path) -> list[Path]:
    """Copy the records of every run under ``src`` (a directory with a ``summary.json``) to
    ``dst``; returns the run directories copied."""
    copied = []
    for summary in sorted(Path(src).rglob("summary.json")):
        run = summary.parent
        target = Path(dst) / run.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        record = without_places(json.loads(summary.read_text()))
        atomic_write_text(target / "summary.json", json.dumps(record, indent=1) + "\n")
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            atomic_write_text(target / "metrics.jsonl", metrics.read_text())
        copied.append(run)
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    copied = archive(args.src, args.dst)
    if not copied:
        raise SystemExit(f"tensam: no run under {args.src} has a summary.json")
    print(f"copied the records of {len(copied)} runs from {args.src} to {args.dst}")


if __name__ == "__main__":
    main()
