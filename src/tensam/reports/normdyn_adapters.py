"""The mechanism where Tables 4-5 make their claim: the Norm Deviation Q (Definition 1) and
Cov_l(||G_k||^2, ||g_k||^2) (Theorem 3) of every adapter layer under Adam, SAM and DAS, for each
adapter and initialisation, averaged over paired data seeds (a figure and a table).

    python scripts/make_normdyn_adapters.py --root runs/adapters_cpu/study \\
        --root runs/adapters_cpu/zero_init --k 16 --rho 0.1 --alpha 0.5  # reproduce-adapters-cpu

Reads the ``metrics.jsonl`` of every finished run under the roots (records every ``log_every``
steps, from the first pass's gradients before each update) whose task has ``k`` examples per
class: the base optimizer alone, SAM at ``rho`` and DAS at ``alpha``. Runs are grouped into
panels by (adapter, initialisation) and paired across methods by data seed (same data, batches
and initial cores). Per panel and method the figure shows the mean over seeds of Q(t) / Q(0)
(Q summed over the adapter's layers) and of the mean over layers of Cov_l; the table gives Q(0),
Q(end) / Q(0) and the paired difference of Q(end) / Q(0) to the base optimizer with its 95%
t-interval (:func:`tensam.stats.paired_difference`).
"""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tensam.logging import atomic_write_text  # noqa: E402
from tensam.reports.format import adapter_label, machine_info, markdown_table, render  # noqa: E402
from tensam.reports.runs import load_summaries, method_of, read_jsonl  # noqa: E402
from tensam.stats import paired_difference  # noqa: E402

BASES = ("ADAM", "ADAMW", "SGD")
ORDER = (*BASES, "SAM", "DAS")


def chosen(config: dict, k: int, rho: float, alpha: float) -> str | None:
    """The method label of a run that belongs in the figure (its task's k, SAM at ``rho``, DAS
    at ``alpha``, the base alone), else None."""
    method = method_of(config)
    if config["task"].get("k") != k or not config.get("steps"):
        return None
    if method in BASES:
        return method
    value = {"SAM": ("rho", rho), "DAS": ("alpha", alpha)}.get(method)
    return method if value and config["optimizer"].get(value[0]) == value[1] else None


def load(roots: list[Path], k: int, rho: float, alpha: float) -> dict:
    """panel (adapter, init) -> method -> data seed -> norm records (those holding ``norm/Q``)."""
    panels: dict = defaultdict(lambda: defaultdict(dict))
    for root in roots:
        for key, summary in load_summaries(root).items():
            config = summary["config"]
            method = chosen(config, k, rho, alpha)
            if summary.get("status") != "finished" or method is None:
                continue
            adapter = config["model"]["adapter"]
            panel = (adapter_label(adapter), adapter.get("init", "reference"))
            records = [r for r in read_jsonl(root.joinpath(*key) / "metrics.jsonl")
                       if "norm/Q" in r]
            panels[panel][method][config["task"]["data_seed"]] = records
    return panels


def trajectories(by_seed: dict, key: str, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values per seed x step) of ``key``, divided by its first value if ``relative``;
    the steps all seeds logged."""
    n = min(len(records) for records in by_seed.values())
    steps = np.array([r["step"] for r in next(iter(by_seed.values()))[:n]])
    values = np.array([[r[key] for r in records[:n]] for records in by_seed.values()])
    return steps, values / values[:, :1] if relative else values


def plot(panels: dict, path: Path, title: str) -> None:
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 7.5), squeeze=False)
    for col, ((adapter, init), methods) in enumerate(sorted(panels.items())):
        for method in sorted(methods, key=ORDER.index):
            steps, q = trajectories(methods[method], "norm/Q", relative=True)
            line, = axes[0][col].plot(steps, q.mean(0), label=f"{method} (n={len(q)})")
            axes[0][col].fill_between(steps, q.min(0), q.max(0), color=line.get_color(),
                                      alpha=0.15, lw=0)
            steps, cov = trajectories(methods[method], "norm/cov", relative=False)
            axes[1][col].plot(steps, cov.mean(0), color=line.get_color(), label=method)
        axes[0][col].set(title=f"{adapter}, {init} init: Q(t) / Q(0)", xlabel="step")
        axes[0][col].legend(fontsize=8)
        axes[1][col].set(title="mean over layers of Cov_l(||G_k||^2, ||g_k||^2)",
                         xlabel="step")
        axes[1][col].set_yscale("symlog", linthresh=1e-6)
        axes[1][col].axhline(0, color="k", lw=0.5)
    fig.suptitle(title + "\n(lines: mean over data seeds; bands: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows(panels: dict) -> list[list]:
    """Per panel and method: seeds, Q(0), Q(end)/Q(0), the paired difference of Q(end)/Q(0) to
    the panel's base optimizer, and the share of (layer, step) with Cov_l < 0."""
    out = []
    for (adapter, init), methods in sorted(panels.items()):
        ratio, cov_neg, q0 = {}, {}, {}
        for method, by_seed in methods.items():
            ratio[method] = {s: r[-1]["norm/Q"] / r[0]["norm/Q"] for s, r in by_seed.items()}
            q0[method] = np.mean([r[0]["norm/Q"] for r in by_seed.values()])
            covs = [v for r in by_seed.values() for rec in r for key, v in rec.items()
                    if key.endswith("/cov") and key != "norm/cov"]
            cov_neg[method] = float(np.mean(np.array(covs) < 0))
        base = next((m for m in BASES if m in methods), None)
        for method in sorted(methods, key=ORDER.index):
            values = list(ratio[method].values())
            spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
            diff = "-"
            if base is not None and method != base:
                d = paired_difference(ratio[method], ratio[base])
                diff = d.format(4)
            out.append([adapter, init, method, len(values), f"{q0[method]:.4g}",
                        f"{np.mean(values):.4f} ± {spread:.4f}",
                        diff, f"{cov_neg[method]:.3f}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", required=True,
                        help="a directory of runs (repeat for several)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rho", type=float, required=True)
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/adapters_normdyn"))
    args = parser.parse_args()
    panels = load(args.root, args.k, args.rho, args.alpha)
    if not panels:
        raise SystemExit(f"no finished run with k={args.k} under {[str(r) for r in args.root]}")
    title = (f"all-MiniLM-L6-v2 adapters, few-shot SST-2 (k = {args.k}): Adam, SAM (rho = "
             f"{args.rho}) and DAS (alpha = {args.alpha}) over Adam")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(panels, png, title)
    machine = machine_info()
    roots = " ".join(f"--root {r}" for r in args.root)
    text = render(
        "normdyn_adapters", command=f"python scripts/make_normdyn_adapters.py {roots} --k "
        f"{args.k} --rho {args.rho} --alpha {args.alpha} --out {args.out}",
        date=datetime.date.today(), title=title, figure=png.name,
        machine=f"{machine['cpu']} ({machine['cpus']} CPUs), torch {machine['torch']}",
        table=markdown_table(["adapter", "init", "method", "seeds", "Q(0) (mean)",
                              "Q(end) / Q(0), mean ± std",
                              "paired difference to the base, mean [95% t-interval]",
                              "share of (layer, step) with Cov_l < 0"], rows(panels)))
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(f"wrote {args.out.with_suffix('.md')} and {png}")


if __name__ == "__main__":
    main()
