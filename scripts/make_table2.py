"""Table 2 (CIFAR-10 with symmetric label noise) from run directories, the paper's column beside.

    python scripts/make_table2.py --root runs/table2      # paper scale: make reproduce-table2
    python scripts/make_table2.py --root runs/vision_cpu/noise_cpu --out results/noise_cpu.md \\
        --title "..."                                        # CPU scale: make reproduce-noise-cpu

Every ``summary.json`` under ``--root`` is one run; runs are grouped by (noise rate, method) and
reported as mean ± sample std of the test accuracy over seeds, with the measured corrupted
fraction, the training time per step and the number of runs. Nothing is read but the summaries
(through :mod:`tensam.reports`): a diverged run is counted apart ("2 (+1 diverged)"), never
averaged; runs of other stored settings (epochs, rank, base optimizer, ...) than the rest are
refused in one line naming them, since the text under the table names one setting.
"""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path

from _common import (
    fmt_mean_std,
    load_summaries,
    markdown_table,
    mean_std,
    method_of,
    optimizer_settings,
    write_report,
)

from tensam.reports import Cell, require_same_settings, run_name

#: the paper's Table 2 (TR-ResNet-32, 3 runs): noise -> method -> (mean, std) test accuracy (%)
PAPER = {0.4: {"SGD": (83.76, 0.24), "SAM": (86.59, 0.16), "DAS": (84.35, 0.40)},
         0.6: {"SGD": (77.41, 1.08), "SAM": (82.03, 0.25), "DAS": (77.73, 0.27)},
         0.8: {"SGD": (57.33, 0.44), "SAM": (67.13, 1.70), "DAS": (60.74, 0.57)}}
#: the paper's runtime row (seconds per step on its GPU)
PAPER_RUNTIME = {"SGD": 0.039, "SAM": 0.090, "DAS": 0.054}
ORDER = ("SGD", "SAM", "DAS")


#: the settings the table's rows and columns vary: the noise rate, and each method's own options
#: (the base optimizer, model, data and budget are one setting, named under the table)
NOISE = "task.data.label_noise"


def _varies(key: str) -> bool:
    return key == NOISE or (key.startswith("optimizer.") and not key.startswith("optimizer.base."))


def group(summaries: dict) -> dict[tuple, Cell]:
    """(noise rate, method) -> its runs (:class:`tensam.reports.Cell`: finished ones averaged,
    diverged ones counted apart). Runs of one cell must share their stored settings but for the
    seed, and all runs every setting the text under the table names (else
    :class:`tensam.reports.MixedSettingsError`, naming the runs)."""
    named = {run_name(k): s for k, s in summaries.items()}
    require_same_settings(named, "the table (one model, data set, budget and base optimizer)",
                          vary=_varies)
    groups = defaultdict(dict)
    for name, summary in named.items():
        cfg = summary["config"]
        groups[(cfg["task"]["data"]["label_noise"], method_of(cfg))][name] = summary
    for (noise, method), runs in groups.items():
        require_same_settings(runs, f"the cell noise {noise:.0%} / {method}")
    return {key: Cell.of(runs) for key, runs in groups.items()}


def rows(groups: dict[tuple, Cell]) -> list[list]:
    out = []
    for (noise, method) in sorted(groups, key=lambda k: (k[0], ORDER.index(k[1])
                                                         if k[1] in ORDER else 9)):
        cell = groups[(noise, method)]
        runs = list(cell.finished.values())
        paper = PAPER.get(noise, {}).get(method)
        if runs:
            acc = mean_std([100 * v for v in cell.values("accuracy")])
            measured = mean_std([r["data"]["label_noise_measured"] for r in runs])
            step = mean_std([r["seconds_per_step"] for r in runs])
            ours = fmt_mean_std(*acc, digits=2) if len(runs) > 1 else f"{acc[0]:.2f} (one seed)"
            measured_text, step_text = f"{measured[0]:.4f}", f"{step[0]:.3f}"
        else:
            ours, measured_text, step_text = "- (no finished run)", "-", "-"
        seeds = ", ".join(str(r["config"]["seed"]) for r in runs)
        if cell.diverged:
            seeds += ("; " if seeds else "") + "diverged: " + ", ".join(
                str(r["config"]["seed"]) for r in cell.diverged.values())
        out.append([f"{noise:.0%}", method, ours,
                    fmt_mean_std(*paper, digits=2) if paper else "-",
                    measured_text, step_text,
                    PAPER_RUNTIME.get(method, "-"), cell.count(), seeds])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/table2.md"))
    parser.add_argument("--title", default="Table 2: TR-ResNet-32 (rank 15) on CIFAR-10 with "
                        "symmetric label noise")
    args = parser.parse_args()
    summaries = load_summaries(args.root)
    if not summaries:
        raise SystemExit(f"no runs under {args.root}")
    try:
        groups = group(summaries)
        body = rows(groups)
    except ValueError as err:  # mixed settings, or a finished run without its accuracy
        raise SystemExit(f"tensam: {err}") from None
    first = next(iter(summaries.values()))["config"]
    data, model = first["task"]["data"], first["model"]
    header = ["noise", "method", "ours: test acc. (%)", "paper (Table 2, TR-ResNet-32)",
              "measured wrong labels", "ours: s/step", "paper: s/step (GPU)", "n", "seeds"]
    text = [f"# {args.title}", "",
            f"Generated by `python scripts/make_table2.py --root {args.root}` on "
            f"{datetime.date.today()} from {len(summaries)} run summaries. Ours: mean ± sample "
            "std over seeds of the accuracy on the clean CIFAR-10 test set, over the finished "
            "runs (n; diverged runs are counted apart and never averaged) (the JPEG re-encoding "
            "of CIFAR-10 at hand, see shared data; close to, not identical with, the original "
            "binary release). The paper's numbers are copied from its Table 2.", "",
            markdown_table(header, body),
            f"Model `{model['_target_']}` depth {model['depth']}, conv `{model['conv']}`, rank "
            f"{model['rank']}; data: train split `{data['train_split']}`, subset "
            f"{data['subset']}, noise mode `{data['noise_mode']}` (see "
            "`tensam.data.cifar.symmetric_noise`), scored on `{eval}`; {epochs} epochs, batch "
            "{batch}; optimizer settings: {opt}.".format(
                eval=data["eval_split"], epochs=first["epochs"],
                batch=first["task"]["batch_size"], opt=optimizer_settings(summaries.values())),
            ""]
    write_report(args.out, text, summaries,
                 "under whatever else the machine was running (CPU runs went two at a time, "
                 "beside other jobs): compare methods' costs with `make bench-vision`, which "
                 "times them side by side.")


if __name__ == "__main__":
    main()
