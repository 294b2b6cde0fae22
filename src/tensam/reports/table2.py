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

from tensam.reports import Cell, require_same_settings, run_name
from tensam.reports.format import fmt_mean_std, markdown_table, mean_std, write_report
from tensam.reports.runs import load_summaries, method_of, optimizer_settings
from tensam.stats import paired_difference

#: the paper's Table 2 (TR-ResNet-32, 3 runs): noise -> method -> (mean, std) test accuracy (%)
PAPER = {0.4: {"SGD": (83.76, 0.24), "SAM": (86.59, 0.16), "DAS": (84.35, 0.40)},
         0.6: {"SGD": (77.41, 1.08), "SAM": (82.03, 0.25), "DAS": (77.73, 0.27)},
         0.8: {"SGD": (57.33, 0.44), "SAM": (67.13, 1.70), "DAS": (60.74, 0.57)}}
#: the paper's runtime row (seconds per step on its GPU)
PAPER_RUNTIME = {"SGD": 0.039, "SAM": 0.090, "DAS": 0.054}
ORDER = ("SGD", "SAM", "DAS", "DAS (layer)")


#: the settings the table's rows and columns vary: the noise rate, and each method's own options
#: (the base optimizer, model, data and budget are one setting, named under the table)
NOISE = "task.data.label_noise"


def _varies(key: str) -> bool:
    return key == NOISE or (key.startswith("optimizer.") and not key.startswith("optimizer.base."))


def row_label(cfg: dict) -> str:
    """The method, with DAS's normalization where it is not the default ``global``."""
    method = method_of(cfg)
    normalization = cfg["optimizer"].get("normalization", "global")
    return f"{method} ({normalization})" if method == "DAS" and normalization != "global" \
        else method


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
        groups[(cfg["task"]["data"]["label_noise"], row_label(cfg))][name] = summary
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


def _by_seed(cell: Cell, key: str) -> dict[int, float]:
    return {r["config"]["seed"]: 100 * r[key] for r in cell.finished.values() if key in r}


def paired_rows(groups: dict[tuple, Cell]) -> list[list]:
    """Per noise rate and method, the paired differences to SGD over the seeds both finished
    (:func:`tensam.stats.paired_difference`: mean and 95% Student-t interval), of the final and
    of the best-evaluation test accuracy."""
    out = []
    for (noise, method), cell in sorted(groups.items(), key=lambda kv: (
            kv[0][0], ORDER.index(kv[0][1]) if kv[0][1] in ORDER else 9)):
        sgd = groups.get((noise, "SGD"))
        if method == "SGD" or sgd is None:
            continue
        cols = []
        for key in ("accuracy", "best/accuracy"):
            a, b = _by_seed(cell, key), _by_seed(sgd, key)
            if set(a) & set(b):
                d = paired_difference(a, b)
                cols += [d.format(2), "yes" if d.excludes_zero else "no"]
            else:
                cols += ["-", "-"]
        seeds = sorted(set(_by_seed(cell, "accuracy")) & set(_by_seed(sgd, "accuracy")))
        out.append([f"{noise:.0%}", f"{method} - SGD", *cols, len(seeds)])
    return out


def regime_rows(groups: dict[tuple, Cell]) -> list[list]:
    """Where the runs ended up on their noisy training labels (``fit/*``, mean over seeds) and
    how far the final test accuracy fell below the best evaluation's."""
    out = []
    for (noise, method), cell in sorted(groups.items(), key=lambda kv: (
            kv[0][0], ORDER.index(kv[0][1]) if kv[0][1] in ORDER else 9)):
        runs = list(cell.finished.values())
        if not runs or "fit/memorized" not in runs[0]:
            continue
        mean = {key: sum(r[key] for r in runs) / len(runs) for key in (
            "fit/accuracy", "fit/memorized", "fit/clean", "best/accuracy", "accuracy",
            "train/loss")}
        out.append([f"{noise:.0%}", method, f"{100 * mean['fit/accuracy']:.1f}",
                    f"{100 * mean['fit/memorized']:.1f}", f"{100 * mean['fit/clean']:.1f}",
                    f"{100 * mean['best/accuracy']:.2f}",
                    f"{100 * (mean['best/accuracy'] - mean['accuracy']):.2f}",
                    f"{mean['train/loss']:.3f}", len(runs)])
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
        body, paired, regime = rows(groups), paired_rows(groups), regime_rows(groups)
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
            *(["Paired differences to SGD (same seed: same initialisation, noisy labels, epoch "
               "order and augmentations), test accuracy in points: mean and 95% Student-t "
               "interval over the seeds both finished (`tensam.stats`); final = the last "
               "evaluation, best = the best of the evaluations during training (chosen on the "
               "test set itself, so an optimistic reading of early stopping).", "",
               markdown_table(["noise", "difference", "final", "CI excludes 0", "best",
                               "CI excludes 0", "n"], paired)] if paired else []),
            *(["The regime: the fit of the noisy training labels at the end (fit/accuracy: "
               "predicted as their training label; of the relabelled images, fit/memorized: "
               "predicted as their wrong label, fit/clean: as their true one; unaugmented "
               "training images), the best evaluation's test accuracy and the drop from it to "
               "the final one, and the final training loss. Means over seeds.", "",
               markdown_table(["noise", "method", "fit/accuracy (%)", "fit/memorized (%)",
                               "fit/clean (%)", "best test acc. (%)", "drop to final (pts)",
                               "train loss", "n"], regime)] if regime else []),
            f"Model `{model['_target_']}` depth {model['depth']}, conv `{model['conv']}`, rank "
            f"{model['rank']}; data: train split `{data['train_split']}`, subset "
            f"{data['subset']}, noise mode `{data['noise_mode']}` (see "
            "`tensam.data.cifar.symmetric_noise`), scored on `{eval}`; {epochs} epochs, batch "
            "{batch}; optimizer settings: {opt}.".format(
                eval=data["eval_split"], epochs=first["epochs"],
                batch=first["task"]["batch_size"],
                opt=optimizer_settings(summaries.values(), row_label)),
            ""]
    write_report(args.out, text, summaries,
                 "under whatever else the machine was running (the runs' thread counts: "
                 f"{sorted({s['config'].get('threads') for s in summaries.values()}, key=str)}"
                 "): compare methods' costs with `make bench-vision`, which times them side "
                 "by side.")


if __name__ == "__main__":
    main()
