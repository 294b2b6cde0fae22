"""Wall time of the stages of a reproduction target (training, baselines, diagnostics, ...).

A Makefile recipe runs each stage through this module, which runs the command, appends one
record to a JSONL log beside the runs and exits with the command's status::

    python -m tensam.reports.stages --log runs/table1/stages.jsonl --stage training -- \\
        python train.py -m ...

A record holds the stage, its wall time, when it started, the 1-minute load average before it
and the machine; a table builder reads the latest record of each stage (:func:`latest`). A
stage that resumed an interrupted target (finished runs are skipped) took less than a full one;
its record says so only through its time, so the builder prints the date beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def run_stage(log: Path, stage: str, command: list[str]) -> int:
    """Run ``command``; append ``{stage, seconds, started, load, cpus, status}`` to ``log``."""
    if not command:
        raise SystemExit("tensam: no command given after --")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    status = subprocess.call(command)
    record = {"stage": stage, "seconds": round(time.perf_counter() - t0, 2), "started": started,
              "load": load, "cpus": os.cpu_count(), "status": status}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
    return status


def process_seconds() -> float | None:
    """Wall time since this process started, imports included (Linux ``/proc``; else None)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def latest(log: Path) -> dict[str, dict]:
    """The latest successful record of each stage in ``log`` (empty if there is no log)."""
    out: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line (a kill while appending)
                continue
            if record.get("status") == 0:
                out[record["stage"]] = record
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="JSONL file to append to")
    parser.add_argument("--stage", required=True, help="the stage's name")
    args = parser.parse_args(argv[:split])
    return run_stage(args.log, args.stage, argv[split + 1:])


if __name__ == "__main__":
    raise SystemExit(main())
