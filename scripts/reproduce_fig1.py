"""Figure 1: Norm Deviation Q and Cov(||G_k||^2, ||g_k||^2) vs iterations on Tucker-2 denoising.

Runs ``experiment=fig1`` (configs/experiment/fig1.yaml) through the shared entry point
:func:`tensam.train.run` for every optimizer x noise level x batching, reads the per-step
``metrics.jsonl`` and writes

* ``results/fig1.csv``: long format ``setting, optimizer, noise, step, Q, cov, loss``, every
  ``--csv-every``-th step;
* ``results/fig1.png``: Q (left) and Cov (right) vs iterations, one row per batching setting;

and prints a summary table (Q reduction factors, covariance signs) used in
``experiments/fig1/README.md``.

    python scripts/reproduce_fig1.py [--out results] [--wandb] [hydra overrides, e.g. steps=5000]

With ``--wandb`` every run also goes to W&B (group ``fig1``), where the per-layer
``norm/<layer>/Q`` and ``norm/<layer>/cov`` panels show Figure 1 as it is drawn.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from tensam.train import CONFIG_DIR, run  # noqa: E402

OPTIMIZERS = {"sgd": "SGD", "sam": "SAM", "das": "DAS"}
NOISES = (0.0, 0.5, 1.0, 2.0)
#: batching setting -> task.batching; "stochastic" is E_N over a fresh draw per step
SETTINGS = {"stochastic": "fresh", "full-batch": "full"}
STYLES = {"sgd": ":", "sam": "-", "das": "--"}


def run_one(setting: str, optimizer: str, noise: float, extra: list[str]) -> pd.DataFrame:
    """One composed ``experiment=fig1`` run; its per-step log as a DataFrame."""
    overrides = ["experiment=fig1", f"optimizer={optimizer}", f"task.noise={noise}",
                 f"task.batching={SETTINGS[setting]}", *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(cfg, Path(tmp))
        lines = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "norm/Q" in r]
    frame = pd.DataFrame({
        "setting": setting, "optimizer": optimizer, "noise": noise,
        "step": [r["step"] for r in records], "Q": [r["norm/Q"] for r in records],
        "cov": [r["norm/cov"] for r in records], "loss": [r["train/loss"] for r in records],
    })
    frame.attrs["rel_error"] = summary["rel_error"]
    frame.attrs["config"] = summary["config"]
    return frame


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


def plot(frame: pd.DataFrame, path: Path, config: dict) -> None:
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
    opt = config["optimizer"]
    fig.suptitle(f"Tucker-2 denoising, f = E||AGB^T - (T + aN)||^2; SGD lr {opt['base']['lr']:g}, "
                 f"SAM rho = {opt['rho']:g}, DAS alpha = {opt['alpha']:g} (SGD base); "
                 f"seed {config['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides, e.g. optimizer.rho=0.05 steps=5000")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--csv-every", type=int, default=10,
                        help="keep every N-th step in fig1.csv (the plot uses every step)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log every run to W&B (group fig1; mode from WANDB_MODE)")
    args = parser.parse_args()
    if not args.wandb:
        args.overrides = ["logger=disabled", *args.overrides]
    started = time.perf_counter()
    frames, rel_errors = [], {}
    for setting in SETTINGS:
        for noise in NOISES:
            for opt in OPTIMIZERS:
                frame = run_one(setting, opt, noise, args.overrides)
                rel_errors[(setting, opt, noise)] = frame.attrs["rel_error"]
                frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    frame[frame["step"] % args.csv_every == 0].to_csv(args.out / "fig1.csv", index=False,
                                                      float_format="%.6g")
    plot(frame, args.out / "fig1.png", frames[-1].attrs["config"])
    table = summarize(frame, rel_errors)
    print(markdown(table))
    print(f"wrote {args.out / 'fig1.csv'} and {args.out / 'fig1.png'} "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
