"""Figure 1: Norm Deviation Q and Cov(||G_k||^2, ||g_k||^2) vs iterations on Tucker-2 denoising.

Builds the figure from the runs of ``make reproduce-fig1``: a Hydra multirun of
``experiment=fig1`` (configs/experiment/fig1.yaml) over optimizer x noise level x batching into
``<root>/<batching>/<optimizer>/noise<a>/``, each logging Q and Cov at every step. Reads every
run's ``metrics.jsonl`` and writes

* ``results/fig1.csv``: long format ``setting, optimizer, noise, step, Q, cov, loss``, every
  ``--csv-every``-th step;
* ``results/fig1.png``: Q (left) and Cov (right) vs iterations, one row per batching setting;

and prints a summary table (Q reduction factors, covariance signs) used in
``experiments/fig1/README.md``.

    python scripts/reproduce_fig1.py [--root runs/fig1] [--out results]

With ``make reproduce-fig1 LOGGER=default`` every run also goes to W&B (group ``fig1``), where
the per-layer ``norm/<layer>/Q`` and ``norm/<layer>/cov`` panels show Figure 1 as it is drawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tensam.reports.runs import read_jsonl  # noqa: E402

OPTIMIZERS = {"sgd": "SGD", "sam": "SAM", "das": "DAS"}
#: batching setting -> task.batching; "stochastic" is E_N over a fresh draw per step
SETTINGS = {"stochastic": "fresh", "full-batch": "full"}
STYLES = {"sgd": ":", "sam": "-", "das": "--"}


def load(root: Path) -> tuple[pd.DataFrame, dict, dict]:
    """Every run under ``root`` (``<batching>/<optimizer>/<any>/``): the per-step log as one
    frame in the order settings x noise x optimizer, the final ``rel_error`` of each run and
    the stored config of each optimizer."""
    runs = []
    for path in Path(root).glob("*/*/*/summary.json"):
        summary, optimizer = json.loads(path.read_text()), path.parent.parent.name
        task = summary["config"]["task"]
        setting = next((k for k, v in SETTINGS.items() if v == task["batching"]), None)
        if optimizer in OPTIMIZERS and setting is not None:
            runs.append((setting, float(task["noise"]), optimizer, path.parent, summary))
    runs.sort(key=lambda r: (list(SETTINGS).index(r[0]), r[1], list(OPTIMIZERS).index(r[2])))
    frames, rel_errors, configs = [], {}, {}
    for setting, noise, optimizer, run_dir, summary in runs:
        records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "norm/Q" in r]
        frames.append(pd.DataFrame({
            "setting": setting, "optimizer": optimizer, "noise": noise,
            "step": [r["step"] for r in records], "Q": [r["norm/Q"] for r in records],
            "cov": [r["norm/cov"] for r in records], "loss": [r["train/loss"] for r in records],
        }))
        rel_errors[(setting, optimizer, noise)] = summary["rel_error"]
        configs[optimizer] = summary["config"]
    return pd.concat(frames, ignore_index=True), rel_errors, configs


def summarize(frame: pd.DataFrame, rel_errors: dict) -> pd.DataFrame:
    """Per run: Q at the start and end, Q(start)/Q(end), the share of steps with Cov < 0."""
    rows = []
    for (setting, opt, noise), g in frame.groupby(["setting", "optimizer", "noise"], sort=False):
        q = g["Q"].to_numpy()
        half = g["cov"].to_numpy()[len(g) // 2:]
        rows.append({"setting": setting, "optimizer": OPTIMIZERS[opt], "noise": noise,
                     "Q_0": q[0], "Q_max": q.max(), "Q_end": q[-1], "Q_0/Q_end": q[0] / q[-1],
                     "cov<0 (2nd half)": (half < 0).mean(),
                     "median cov (2nd half)": float(pd.Series(half).median()),
                     "rel_error": rel_errors[(setting, opt, noise)]})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown table, floats to 4 significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def plot(frame: pd.DataFrame, path: Path, configs: dict) -> None:
    """Rows: batching settings; columns: Q and Cov vs iterations (symlog Cov)."""
    settings = list(dict.fromkeys(frame["setting"]))
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), squeeze=False)
    colors = plt.get_cmap("viridis")
    noises = sorted(frame["noise"].unique())
    for row, setting in zip(axes, settings, strict=True):
        for (opt, noise), g in frame[frame["setting"] == setting].groupby(
                ["optimizer", "noise"], sort=False):
            color = colors(noises.index(noise) / max(len(noises) - 1, 1) * 0.9)
            label = f"{OPTIMIZERS[opt]}, a={noise:g}"
            row[0].plot(g["step"], g["Q"], STYLES[opt], color=color, label=label, lw=1.2)
            cov = g["cov"].rolling(50, min_periods=1).mean()
            row[1].plot(g["step"], cov, STYLES[opt], color=color, label=label, lw=1.2)
        row[0].set(title=f"{setting}: Norm Deviation Q (Def. 1)", xlabel="iteration",
                   ylabel="Q", yscale="log")
        row[1].set(title=f"{setting}: Cov(||G_k||^2, ||g_k||^2) (50-step mean)",
                   xlabel="iteration", ylabel="Cov", yscale="symlog")
        row[1].axhline(0, color="k", lw=0.5)
    axes[0][0].legend(ncol=3, fontsize=7)
    sam, das = configs["sam"], configs["das"]
    fig.suptitle(f"Tucker-2 denoising, f = E||AGB^T - (T + aN)||^2; SGD lr "
                 f"{das['optimizer']['base']['lr']:g}, SAM rho = {sam['optimizer']['rho']:g}, "
                 f"DAS alpha = {das['optimizer']['alpha']:g} (SGD base); seed {das['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs") / "fig1")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--csv-every", type=int, default=10,
                        help="keep every N-th step in fig1.csv (the plot uses every step)")
    args = parser.parse_args()
    frame, rel_errors, configs = load(args.root)
    args.out.mkdir(parents=True, exist_ok=True)
    frame[frame["step"] % args.csv_every == 0].to_csv(args.out / "fig1.csv", index=False,
                                                      float_format="%.6g")
    plot(frame, args.out / "fig1.png", configs)
    print(markdown(summarize(frame, rel_errors)))
    print(f"wrote {args.out / 'fig1.csv'} and {args.out / 'fig1.png'}")


if __name__ == "__main__":
    main()
