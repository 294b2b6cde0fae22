"""Figure 2: train loss and R2 along a fixed random direction, Adam vs SAM vs DAS (COVID Tucker).

For each Table 1 protocol (``heldout``: ``experiment=table1``; ``paper``:
``experiment=table1_paper``) this loads the final cores w of Adam, SAM and DAS on split 0 (seed 0)
from Table 1's runs, ``<root>/<protocol>/<none|sam|das>/seed0/`` (``checkpoint.pt`` at the last
step; ``make reproduce-fig2`` trains them unless ``make reproduce-table1`` already did), and
evaluates the train loss and the R2 scores at w + t d.

The random direction r (one N(0, 1) draw per core, seeded, hence the same for every model) is
normalised in two ways, both reported:

* ``core`` (primary; Li et al. 2018's filter normalisation with the core as the filter):
  d_k = r_k ||G_k|| / ||r_k||. The Tucker map is invariant under G_k -> c_k G_k with
  prod_k c_k = 1, and so are the curves under this normalisation (w + t d rescales core by core),
  so they compare the minima themselves, not how their norm is split between the cores;
* ``global``: d = r / ||r||, the same unit vector for every model, t in parameter units. Curves
  then also reflect the norm balance (Norm Deviation Q, Definition 1) that SAM and DAS change.

Flatness scalars, over ``--directions`` directions (direction 0 is the plotted one): the mean
train-loss increase at t = +-radius, and the smallest |t| at which the protocol's R2 drops by
``R2_DROP`` (linear interpolation on the t grid). Writes ``results/fig2.csv`` (long format
``protocol, normalization, optimizer, t, metric, value``; direction 0), ``results/fig2.png`` and
``results/fig2.md``.

    python scripts/reproduce_fig2.py [--root runs/table1] [--out results] [--directions 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tensam.cores import core_groups  # noqa: E402
from tensam.reports.format import (  # noqa: E402
    fmt_mean_std,
    machine_info,
    markdown_table,
    mean_std,
    render,
)
from tensam.reports.runs import build, final_state  # noqa: E402

#: protocol -> (experiment config, R2 metrics plotted; the first is the protocol's score)
PROTOCOLS = {"heldout": ("table1", ("r2_heldout", "r2_observed")),
             "paper": ("table1_paper", ("r2_observed", "r2_heldout"))}
OPTIMIZERS = {"adam": "Adam", "sam": "SAM", "das": "DAS"}
#: optimizer -> run directory of Table 1's grid (``none``: the experiment's base alone)
DIRS = {"adam": "none", "sam": "sam", "das": "das"}
STYLES = {"adam": ("tab:blue", ":"), "sam": ("tab:orange", "-"), "das": ("tab:green", "--")}
#: normalisation -> (t range of the plot and the R2-drop search, radii of the loss increase)
NORMALIZATIONS = {"core": (0.3, (0.01, 0.05)), "global": (2.0, (0.1, 0.5))}
R2_DROP = 0.01
GRID = 401  # points on [-T, T]; odd, so t = 0 is on the grid
DIRECTION_SEED = 2025


def trained(run_dir: Path):
    """(task, model at the final weights, summary) of a finished training run."""
    summary, state = final_state(run_dir)
    task, model = build(summary["config"])
    model.load_state_dict(state)
    return task, model, summary


def random_direction(cores, index: int) -> list[torch.Tensor]:
    """N(0, 1) entries, one tensor per core, from generator seed DIRECTION_SEED + index."""
    gen = torch.Generator().manual_seed(DIRECTION_SEED + index)
    return [torch.randn(c.shape, generator=gen, dtype=c.dtype) for c in cores]


def normalize(direction, cores, kind: str) -> list[torch.Tensor]:
    """``core``: ||d_k|| = ||G_k|| (Li et al. 2018, core as filter); ``global``: ||d|| = 1."""
    if kind == "core":
        return [r * (c.norm() / r.norm()) for r, c in zip(direction, cores, strict=True)]
    if kind == "global":
        total = torch.stack(torch._foreach_norm(direction)).norm()
        return [r / total for r in direction]
    raise ValueError(f"normalization={kind!r} is not one of {list(NORMALIZATIONS)}")


@torch.no_grad()
def profile(task, model, direction, ts: np.ndarray) -> dict[str, np.ndarray]:
    """Train loss and every task score at w + t d for each t; restores w."""
    cores = [c for g in core_groups(model) for c in g.cores]
    w = [c.detach().clone() for c in cores]
    out: dict[str, list[float]] = {}
    for t in ts:
        torch._foreach_copy_(cores, w)
        torch._foreach_add_(cores, direction, alpha=float(t))
        for key, value in {"loss": task.loss(model, task.batch(0)).item(),
                           **task.evaluate(model)}.items():
            out.setdefault(key, []).append(value)
    torch._foreach_copy_(cores, w)
    return {k: np.asarray(v) for k, v in out.items()}


def drop_radius(ts: np.ndarray, r2: np.ndarray, drop: float) -> float:
    """Smallest |t| (either side of 0) where R2 first falls ``drop`` below R2(0); inf if never."""
    center = len(ts) // 2
    radii = []
    for side in (slice(center, None), slice(center, None, -1)):
        t, fall = np.abs(ts[side]), r2[center] - r2[side]
        hit = np.flatnonzero(fall >= drop)
        if hit.size:
            i = hit[0]
            radii.append(float(np.interp(drop, fall[i - 1:i + 1], t[i - 1:i + 1])))
    return min(radii, default=float("inf"))


def flatness(profiles: list[dict], ts: np.ndarray, radii, metric: str) -> dict[str, list[float]]:
    """Per direction: loss increase at t = +-radius (mean of both sides); R2-drop radius."""
    out: dict[str, list[float]] = {}
    for prof in profiles:
        for radius in radii:
            at = np.interp([-radius, radius], ts, prof["loss"]).mean()
            out.setdefault(f"dloss@{radius:g}", []).append(float(at - prof["loss"][len(ts) // 2]))
        out.setdefault("r2_radius", []).append(drop_radius(ts, prof[metric], R2_DROP))
    return out


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Rows: protocol x normalisation; columns: train loss (log scale), then the R2 scores."""
    rows = [(p, n) for p in PROTOCOLS for n in NORMALIZATIONS]
    ncols = 1 + max(len(m) for _, m in PROTOCOLS.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(4.6 * ncols, 3.4 * len(rows)),
                             squeeze=False)
    for ax_row, (protocol, norm) in zip(axes, rows, strict=True):
        metrics = ("loss", *PROTOCOLS[protocol][1])
        sub = frame[(frame["protocol"] == protocol) & (frame["normalization"] == norm)]
        for ax, metric in zip(ax_row, metrics, strict=False):
            for opt, name in OPTIMIZERS.items():
                g = sub[(sub["optimizer"] == opt) & (sub["metric"] == metric)]
                color, style = STYLES[opt]
                ax.plot(g["t"], g["value"], style, color=color, label=name, lw=1.4)
            ylabel = "train loss (log)" if metric == "loss" else metric
            ax.set(title=f"{protocol}, {norm}-normalised: {metric}", xlabel="t in w + t d",
                   ylabel=ylabel, yscale="log" if metric == "loss" else "linear")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict], finals: dict, args, seconds: float, machine: dict) -> str:
    """results/fig2.md: the flatness table beside the paper's qualitative claim."""
    steps = next(iter(finals.values()))["steps"]
    cwd = Path.cwd()
    root = args.root.relative_to(cwd) if args.root.is_relative_to(cwd) else args.root
    training = sum(s["seconds"] for s in finals.values())
    sections = []
    for protocol, (_, metrics) in PROTOCOLS.items():
        sections += [f"## Protocol `{protocol}` (R2 radius on `{metrics[0]}`)", ""]
        keys = ["train/loss", *metrics, "norm/Q"]
        sections += ["Minima w (t = 0); norm/Q is the Norm Deviation Q (Definition 1):", "",
                     markdown_table(["optimizer", *keys], [
                         [OPTIMIZERS[o], *(f"{finals[protocol, o][k]:.4g}" for k in keys)]
                         for o in OPTIMIZERS])]
        for norm in NORMALIZATIONS:
            sub = [r for r in rows if (r["protocol"], r["normalization"]) == (protocol, norm)]
            keys = [k for k in sub[0] if k not in ("protocol", "normalization", "optimizer")]
            body = [[OPTIMIZERS[r["optimizer"]],
                     *(fmt_mean_std(*r[k]) if "radius" in k else f"{r[k][0]:.3g} ± {r[k][1]:.2g}"
                       for k in keys)] for r in sub]
            sections += [f"`{norm}` normalisation:", "",
                         markdown_table(["optimizer", *keys], body),
                         verdict({r["optimizer"]: r[keys[-2]] for r in sub}, keys[-2]), ""]
    return render(
        "fig2", root=root, directions=args.directions, seconds=f"{seconds:.0f}",
        training=f"{training:.0f}", steps=steps,
        machine=f"{machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']}",
        first_seed=DIRECTION_SEED, last_seed=DIRECTION_SEED + args.directions - 1,
        r2_drop=R2_DROP, protocols="\n".join(sections))


def verdict(dloss: dict[str, tuple[float, float]], key: str) -> str:
    """Is each method flatter than Adam at the larger radius (mean gap > sum of the stds)?"""
    adam = dloss["adam"]
    parts = [f"{OPTIMIZERS[o]} {'yes' if adam[0] - m > adam[1] + s else 'no'} "
             f"(Adam's {key} / {OPTIMIZERS[o]}'s = {adam[0] / m:.2f})"
             for o, (m, s) in dloss.items() if o != "adam"]
    return "Flatter than Adam (gap in mean larger than the sum of the stds): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs") / "table1",
                        help="Table 1's runs: <root>/<protocol>/<none|sam|das>/seed0/")
    parser.add_argument("--directions", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    curves, rows, finals = [], [], {}
    for protocol, (_, metrics) in PROTOCOLS.items():
        for opt in OPTIMIZERS:
            task, model, summary = trained(args.root / protocol / DIRS[opt] / "seed0")
            finals[protocol, opt] = summary
            cores = [c.detach() for g in core_groups(model) for c in g.cores]
            for norm, (limit, radii) in NORMALIZATIONS.items():
                ts = np.linspace(-limit, limit, GRID)
                profiles = [profile(task, model, normalize(random_direction(cores, i), cores, norm),
                                    ts) for i in range(args.directions)]
                for metric in ("loss", *metrics):
                    curves.append(pd.DataFrame({"protocol": protocol, "normalization": norm,
                                                "optimizer": opt, "t": ts, "metric": metric,
                                                "value": profiles[0][metric]}))
                stats = flatness(profiles, ts, radii, metrics[0])
                rows.append({"protocol": protocol, "normalization": norm, "optimizer": opt,
                             **{k: mean_std(v) for k, v in stats.items()}})
    frame = pd.concat(curves, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "fig2.csv", index=False, float_format="%.6g")
    steps = summary["steps"]
    plot(frame, args.out / "fig2.png", f"COVID Tucker (8,6,8), seed 0, {steps} steps: one fixed "
         "random direction d (direction 0), same for all optimizers")
    seconds = time.perf_counter() - started
    text = report(rows, finals, args, seconds, machine_info())
    (args.out / "fig2.md").write_text(text)
    print(text)
    print(f"wrote fig2.csv, fig2.png, fig2.md to {args.out} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
