"""Figure 3 (SAM and DAS against SGD on CP-/TR-ResNet-20, CIFAR-10) from run directories.

    python scripts/make_fig3.py --root runs/fig3 --out results/fig3    # make reproduce-fig3
    python scripts/make_fig3.py --root runs/vision_cpu/fig3_cpu \\
        --tune-root runs/vision_cpu/fig3_cpu_tune --out results/fig3_cpu  # ... -fig3-cpu

Every ``summary.json`` under ``--root`` is one run; runs are grouped by (decomposition, rank,
method) from their stored configs, and the runs of a group must share their settings but for
the seed. Diverged runs are counted apart, never averaged. The figure has two panels per
decomposition: test accuracy against the compression ratio (mean and 95% Student-t interval
over seeds), and the gain over SGD paired by seed, acc(method, s) - acc(SGD, s), with the
standard error the paper's Figure 3 draws. The table gives the paired gains with their 95%
intervals (:mod:`tensam.stats`), per model and pooled over the ranks of each decomposition and
over all models (every (model, seed) pair one observation: the mean gain over the design, which
2 or 3 seeds per model cannot resolve model by model), and the mean training time and final
training loss of a run.
With ``--tune-root``, the report also shows which rho and alpha the tuning runs chose
(``tensam.reports.tuned``) and their validation scores. The paper gives Figure 3 as a plot (its
text quotes no number), so its claims are quoted beside ours.
Writes ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tensam.logging import atomic_write_text  # noqa: E402
from tensam.models.resnet import ResNet  # noqa: E402
from tensam.reports.format import machine_info, markdown_table, render  # noqa: E402
from tensam.reports.runs import (  # noqa: E402
    Cell,
    load_summaries,
    method_of,
    require_same_settings,
)
from tensam.reports.tuned import best_setting  # noqa: E402
from tensam.stats import mean_interval, paired_difference  # noqa: E402

METHODS = ("SGD", "SAM", "DAS")
GAINS = ("SAM", "DAS")
STYLE = {"SGD": ("tab:blue", "o"), "SAM": ("tab:orange", "s"), "DAS": ("tab:green", "^")}
#: the tuned key of each method, and the hparams_search sweep that tunes it
TUNED = {"SAM": ("optimizer.rho", "rho"), "DAS": ("optimizer.alpha", "alpha")}


def model_key(config: dict) -> tuple[str, int]:
    return config["model"]["conv"], config["model"]["rank"]


def cells(summaries: dict) -> dict[tuple, Cell]:
    """(conv, rank, method) -> the :class:`Cell` of its runs, refusing a group whose runs differ
    in a setting other than the seed."""
    groups: dict[tuple, dict] = defaultdict(dict)
    for name, s in summaries.items():
        groups[(*model_key(s["config"]), method_of(s["config"]))][name] = s
    for (conv, rank, method), runs in groups.items():
        require_same_settings(runs, f"{method} on {conv.upper()} rank {rank}")
    return {key: Cell.of(runs) for key, runs in groups.items()}


def accuracies(cell: Cell | None) -> dict[int, float]:
    """seed -> test accuracy (%) of the finished runs of ``cell``."""
    if cell is None:
        return {}
    return {s["config"]["seed"]: 100 * s["accuracy"] for s in cell.finished.values()}


def ratio(conv: str, rank: int) -> float:
    """Dense ResNet-20 parameters / the tensorized model's."""
    with torch.device("meta"):
        return ResNet(depth=20, conv=conv, rank=rank).compression_ratio()


def standard_error(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def rows_of(table: dict[tuple, Cell]) -> list[dict]:
    """One row per (conv, rank): accuracies per method and the paired gains over SGD."""
    out = []
    for conv, rank in sorted({k[:2] for k in table}):
        acc = {m: accuracies(table.get((conv, rank, m))) for m in METHODS}
        row = {"conv": conv, "rank": rank, "ratio": ratio(conv, rank), "acc": acc,
               "count": {m: table[(conv, rank, m)].count() if (conv, rank, m) in table else "0"
                         for m in METHODS}}
        for m in GAINS:
            common = set(acc[m]) & set(acc["SGD"])
            row[m] = paired_difference(acc[m], acc["SGD"]) if common else None
            row[f"{m} gains"] = [acc[m][s] - acc["SGD"][s] for s in sorted(common)]
        out.append(row)
    return out


def pooled(rows: list[dict]) -> dict[str, dict]:
    """Per decomposition and over all models ("all"): the paired gains of every (model, seed)
    pair: ``{pool: {"models": count, "pairs": "n_SAM / n_DAS", m: Interval or None}}``."""
    out = {}
    for pool in [*sorted({r["conv"] for r in rows}), "all"]:
        sub = [r for r in rows if pool in (r["conv"], "all")]
        gains = {m: [g for r in sub for g in r[f"{m} gains"]] for m in GAINS}
        out[pool] = {"models": len(sub), **{m: mean_interval(g) if g else None
                                            for m, g in gains.items()},
                     "pairs": " / ".join(str(len(gains[m])) for m in GAINS)}
    return out


def pooled_rows(pools: dict[str, dict]) -> list[list]:
    return [[pool.upper() if pool != "all" else "all models", p["models"], p["pairs"],
             *(p[m].format(2) if p[m] is not None else "-" for m in GAINS)]
            for pool, p in pools.items()]


def time_rows(table: dict[tuple, Cell]) -> list[list]:
    """Per (conv, rank) and method, means over the finished runs: training time (minutes) and
    the final training loss (``train/loss``: the loss of a training batch after the last step,
    which tells whether the runs fit their training images)."""
    def mean(cell: Cell | None, key: str, scale: float, digits: int) -> str:
        if cell is None or not cell.finished:
            return "-"
        return f"{np.mean([s[key] for s in cell.finished.values()]) * scale:.{digits}f}"

    out = []
    for conv, rank in sorted({k[:2] for k in table}):
        cell = [table.get((conv, rank, m)) for m in METHODS]
        out.append([conv.upper(), rank, *(mean(c, "seconds", 1 / 60, 1) for c in cell),
                    *(mean(c, "train/loss", 1.0, 3) for c in cell)])
    return out


def table_rows(rows: list[dict]) -> list[list]:
    def acc(values: dict) -> str:
        if not values:
            return "-"
        ci = mean_interval(values.values())
        sd = np.std(list(values.values()), ddof=1) if len(values) > 1 else 0.0
        return f"{ci.mean:.2f} ± {sd:.2f}"

    return [[r["conv"].upper(), r["rank"], f"{r['ratio']:.2f}x",
             *(acc(r["acc"][m]) for m in METHODS),
             *(r[m].format(2) if r[m] is not None else "-" for m in GAINS),
             " / ".join(str(r["count"][m]) for m in METHODS)] for r in rows]


def tuning_rows(tune_root: Path) -> list[list]:
    """For each tuned model under ``tune_root`` (``<model>/<rho|alpha>/``): the chosen rho and
    alpha with their validation accuracy, and every grid value's."""
    out = []
    for model in sorted(p for p in tune_root.iterdir() if p.is_dir()):
        for method, (key, sweep) in TUNED.items():
            root = model / sweep
            if not root.is_dir():
                continue
            value, best = best_setting(root, key)
            conv, rank = model_key(best["config"])
            grid = sorted((float(s["config"]["optimizer"][sweep]), 100 * s["accuracy"])
                          for s in load_summaries(root).values() if s.get("status") == "finished")
            out.append([conv.upper(), rank, method, value, f"{100 * best['accuracy']:.2f}",
                        ", ".join(f"{v:g}: {a:.2f}" for v, a in grid)])
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    convs = sorted({r["conv"] for r in rows})
    fig, axes = plt.subplots(len(convs), 2, figsize=(11, 3.8 * len(convs)), squeeze=False)
    for (left, right), conv in zip(axes, convs, strict=True):
        sub = sorted((r for r in rows if r["conv"] == conv), key=lambda r: r["ratio"])
        x = [r["ratio"] for r in sub]
        for m in METHODS:
            color, marker = STYLE[m]
            stats = [mean_interval(r["acc"][m].values()) if r["acc"][m] else None for r in sub]
            mean = [s.mean if s else np.nan for s in stats]
            half = [(s.high - s.mean) if s and s.n > 1 else 0.0 for s in stats]
            left.errorbar(x, mean, yerr=half, color=color, marker=marker, capsize=3, label=m)
        left.set(xscale="log", xlabel="compression ratio (dense / tensorized parameters)",
                 ylabel="test accuracy (%)", title=f"{conv.upper()}-ResNet-20: accuracy "
                 "(mean, 95% t-interval)")
        left.set_xticks(x, [f"{r['ratio']:.1f}x\n(rank {r['rank']})" for r in sub])
        left.minorticks_off()
        left.legend()
        width = 0.35
        for i, m in enumerate(GAINS):
            gains = [r[f"{m} gains"] for r in sub]
            right.bar(np.arange(len(sub)) + (i - 0.5) * width,
                      [np.mean(g) if g else np.nan for g in gains], width,
                      yerr=[standard_error(g) for g in gains], capsize=3, label=m,
                      color=STYLE[m][0])
        right.axhline(0, color="k", lw=0.5)
        right.set(xticks=range(len(sub)), ylabel="gain over SGD (points)",
                  title=f"{conv.upper()}: paired gain over SGD (mean ± s.e., as the paper)")
        right.set_xticklabels([f"rank {r['rank']}\n({r['ratio']:.1f}x)" for r in sub])
        right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict(rows: list[dict], pools: dict[str, dict]) -> str:
    """How many (model, method) gains are significant, and in which direction; the pooled
    gains."""
    parts = []
    for m in GAINS:
        gains = [r[m] for r in rows if r[m] is not None]
        up = sum(g.excludes_zero and g.mean > 0 for g in gains)
        down = sum(g.excludes_zero and g.mean < 0 for g in gains)
        positive = sum(g.mean > 0 for g in gains)
        parts.append(f"- {m} - SGD: mean gain positive on {positive} of {len(gains)} models; the "
                     f"95% interval excludes 0 on {up + down} ({up} above, {down} below).")
    for m in GAINS:
        for pool, p in pools.items():
            g = p[m]
            if g is None or g.n < 2:
                continue
            where = "all models" if pool == "all" else f"{pool.upper()}, all ranks"
            side = ("lies above 0" if g.low > 0 else "lies below 0" if g.high < 0
                    else "includes 0")
            parts.append(f"- {m} - SGD pooled ({where}, {g.n} pairs): {g.format(2)} points; "
                         f"the interval {side}.")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/fig3"))
    parser.add_argument("--tune-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("results/fig3"),
                        help="writes <out>.md and <out>.png")
    parser.add_argument("--title", default="Figure 3: tensorized ResNet-20 on CIFAR-10")
    args = parser.parse_args(argv)
    summaries = load_summaries(args.root)
    if not summaries:
        raise SystemExit(f"tensam: no runs under {args.root}")
    try:
        table = cells(summaries)
        rows = rows_of(table)
        tuning = tuning_rows(args.tune_root) if args.tune_root else []
    except ValueError as err:
        raise SystemExit(f"tensam: {err}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(rows, png, args.title)
    first = next(iter(summaries.values()))["config"]
    machine = machine_info()
    seeds = sorted({s["config"]["seed"] for s in summaries.values()})
    tune = f" --tune-root {args.tune_root}" if args.tune_root else ""
    text = render(
        "fig3", title=args.title, command=f"python scripts/make_fig3.py --root {args.root}"
        f"{tune} --out {args.out}", date=datetime.date.today(),
        machine=f"{machine['cpu']} ({machine['cpus']} CPUs), torch {machine['torch']}",
        hours=f"{sum(s.get('seconds', 0.0) for s in summaries.values()) / 3600:.2f}",
        runs=len(summaries), experiment=first["name"], epochs=first.get("epochs"),
        subset=first["task"]["data"].get("subset") or "all",
        train_split=first["task"]["data"]["train_split"], seeds=", ".join(map(str, seeds)),
        table=markdown_table(["decomposition", "rank", "compression", "SGD acc. (%)",
                              "SAM acc. (%)", "DAS acc. (%)", "SAM - SGD (points)",
                              "DAS - SGD (points)", "runs SGD / SAM / DAS"], table_rows(rows)),
        verdict=verdict(rows, pools := pooled(rows)),
        pooled=markdown_table(["pool", "models", "pairs SAM / DAS", "SAM - SGD (points)",
                               "DAS - SGD (points)"], pooled_rows(pools)),
        times=markdown_table(["decomposition", "rank", "SGD (min)", "SAM (min)", "DAS (min)",
                              "SGD train loss", "SAM train loss", "DAS train loss"],
                             time_rows(table)),
        tuning=markdown_table(["decomposition", "rank", "method", "chosen", "val. acc. (%)",
                               "grid (value: val. acc. %)"], tuning) if tuning else
        "(no tuning runs given: `--tune-root`)\n",
        figure=png.name)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    print(f"wrote {args.out.with_suffix('.md')} and {png}")


if __name__ == "__main__":
    main()
