"""The tuned value of a hyperparameter, read from the runs of its tuning sweep.

    python scripts/tuned_value.py --root runs/fig3_tune/tr10/rho --key optimizer.rho   # -> 0.05

Prints, on stdout alone (for a Makefile or shell to pass on: ``rho=$(...)``), the value of
``--key`` in the finished run with the best objective under ``--root`` (the objective each run
stored, in its task's direction: the tuning protocol of the paper's Appendix B, best validation
accuracy). The runs must differ only in ``--key`` (and the seed): a root that mixes settings is
refused in one line. Ties go to the smaller value; diverged runs never win.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tensam.config import objective
from tensam.reports.runs import FINISHED, load_summaries, require_same_settings, run_name


def setting(summary: dict, key: str) -> Any:
    """The dotted ``key`` of a run's stored config."""
    node: Any = summary["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"run has no setting {key!r}")
        node = node[part]
    return node


def best_setting(root: Path, key: str) -> tuple[Any, dict]:
    """(value of ``key``, summary) of the best finished run under ``root``; :class:`ValueError`
    (one line) when there is none."""
    runs = load_summaries(root)
    if not runs:
        raise ValueError(f"no runs under {root}: run the tuning sweep first")
    require_same_settings(runs, f"the tuning runs under {root}", vary=[key])
    scored = []
    for name, summary in runs.items():
        metric, higher = objective(summary["config"])
        value = summary.get(metric)
        if summary.get("status") == FINISHED and isinstance(value, (int, float)) \
                and math.isfinite(value):
            scored.append(((value if higher else -value), -setting(summary, key), name, metric))
    if not scored:
        raise ValueError(f"no finished run under {root} (of {len(runs)}): nothing to choose from")
    _, _, name, metric = max(scored)
    summary = runs[name]
    print(f"tensam: {key} = {setting(summary, key)} from {run_name(name)} ({metric} "
          f"{summary[metric]:.4f}, best of {len(scored)} finished of {len(runs)} runs under "
          f"{root})", file=sys.stderr)
    return setting(summary, key), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--key", required=True, help="dotted config key, e.g. optimizer.rho")
    args = parser.parse_args(argv)
    try:
        value, _ = best_setting(args.root, args.key)
    except (ValueError, KeyError) as err:
        raise SystemExit(f"tensam: {err}") from None
    print(value)


if __name__ == "__main__":
    main()
