"""DAS's normalisation on a real network, and Theorem 5's sign, from one-step drifts in float64.

    python scripts/normdyn_drift.py --root runs/vision_cpu/normdyn_drift  # reproduce-drift-cpu

TR-ResNet-20 (rank 10, ``experiment=normdyn_cpu``: clean 10k CIFAR-10 subset of the JPEG
re-encoding, batch 128, augmentation), its weights in float64 (every update and every Q_l in
float64; forward and backward by a float32 copy, whose gradients are cast up), follows plain
SGD (lr ``--lr``, no momentum or weight decay) for ``--steps`` steps from the init of each
seed. At every step, from the same weights and on the same batch, one step of SGD and, at each
radius of ``--rhos``, of SAM (rho), DAS-global and DAS-layer (alpha = rho) is taken by the
optimizers themselves (:func:`tensam.metrics.drift.one_step_drifts`) and every layer's dQ_l is
read. A method's drift is its dQ_l minus SGD's.

Theorem 5 predicts SAM's drift 4 eta rho u_D K_l Cov_l; DAS-global gives that with alpha = rho,
DAS-layer is larger by sqrt(sum_l K_l gbar_l / (K_l gbar_l)). The report gives, over all (layer,
step) pairs of a seed: the slope through the origin and the correlation of each DAS drift
against SAM's, and SAM's against the prediction; and per layer, whether the sign of SAM's drift
summed over the steps is the sign of the mean Cov_l (Theorem 3's claim that SAM moves Q_l in
the direction of the covariance). Per seed, ``<root>/seed<k>.jsonl`` holds one line a step; a
checkpoint every ``--checkpoint-every`` steps makes an interrupted run resume.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tensam.cores import core_groups  # noqa: E402
from tensam.logging import atomic_write_text  # noqa: E402
from tensam.metrics.drift import one_step_drifts  # noqa: E402
from tensam.optim import DAS, SAM, WrappedOptimizer  # noqa: E402
from tensam.reports.format import machine_info, markdown_table, render  # noqa: E402
from tensam.reports.runs import build, config  # noqa: E402

DAS_ROWS = {"das_global": "DAS, u_D (global)", "das_layer": "DAS, u_l (layer)"}


def methods(lr: float, rhos: list[float]) -> dict:
    """SGD, and SAM, DAS-global and DAS-layer at each radius (alpha = rho): ``<method>@<rho>``."""
    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=lr)

    def das(normalization, alpha):
        return lambda m: DAS(sgd(m), core_groups(m), alpha=alpha, normalization=normalization)

    out = {"sgd": lambda m: WrappedOptimizer(sgd(m))}
    for rho in rhos:
        out[f"sam@{rho}"] = lambda m, rho=rho: SAM(sgd(m), rho=rho)
        out.update({f"{n}@{rho}": das(n.split("_")[1], rho) for n in DAS_ROWS})
    return out


def shadow_closure(model: torch.nn.Module, shadow: torch.nn.Module, x, y):
    """The step contract's closure for the float64 ``model`` with the forward and backward run
    by its float32 copy ``shadow``: the weights are copied in, the gradients copied out."""
    params, shadow_params = list(model.parameters()), list(shadow.parameters())

    def closure():
        with torch.no_grad():
            torch._foreach_copy_(shadow_params, params)
        shadow.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(shadow(x), y)
        loss.backward()
        for p, q in zip(params, shadow_params, strict=True):
            p.grad = None if q.grad is None else q.grad.double()
        return loss

    return closure


def run_seed(args, seed: int) -> Path:
    """Measure ``args.steps`` steps of one seed into ``<root>/seed<seed>.jsonl`` (resumable)."""
    out, ckpt_path = args.root / f"seed{seed}.jsonl", args.root / f"seed{seed}.pt"
    cfg = config(["experiment=normdyn_cpu", f"seed={seed}", f"task.batch_size={args.batch}"])
    task, shadow = build(cfg)
    shadow.train()
    model = copy.deepcopy(shadow).double()
    names = [g.name for g in core_groups(model)]
    settings = {"lr": args.lr, "rhos": args.rhos, "batch": args.batch}
    start, lines = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        if ckpt["settings"] != settings:
            raise SystemExit(f"{ckpt_path} was measured with {ckpt['settings']}, not {settings}: "
                             "use another --root")
        model.load_state_dict(ckpt["model"])
        start = int(ckpt["step"])
        lines = out.read_text().splitlines()[:start]
    if start >= args.steps:
        return out
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr)
    measure = methods(args.lr, args.rhos)
    batches = task.batch_indices(start)
    for step in range(start, args.steps):
        x, y = task.train_batch(step, next(batches))
        began = time.perf_counter()
        d = one_step_drifts(model, shadow_closure(model, shadow, x, y), measure)
        sgd.step()  # the trajectory: SGD, from the gradient the measurement left on .grad
        record = {"step": step, "seconds": time.perf_counter() - began, "layers": names,
                  **{k: v.tolist() for k, v in d.items()}}
        lines.append(json.dumps(record))
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            atomic_write_text(out, "\n".join(lines) + "\n")
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "step": step + 1, "settings": settings}, tmp)
            tmp.replace(ckpt_path)
            print(f"seed {seed}: step {step + 1}/{args.steps}, loss {record['loss']:.4f}, "
                  f"{record['seconds']:.2f} s/step", flush=True)
    return out


def slope_corr(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x through the origin, and Pearson's r."""
    return float((x * y).sum() / (x * x).sum()), float(np.corrcoef(x, y)[0, 1])


def analyse(path: Path, lr: float, rhos: list[float]) -> dict:
    """Per radius: SAM's drift against Theorem 5's prediction, each DAS's against SAM's."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    arr = {k: np.array([r[k] for r in recs]) for k in recs[0] if k not in ("step", "layers")}
    u_d = 1 / np.sqrt(arr["layer_sq_grad"].sum(1, keepdims=True))
    out = {"steps": len(recs), "layers": recs[0]["layers"], "mean_cov": arr["cov"].mean(0),
           "seconds": float(arr["seconds"].sum()),
           # SAM perturbs every parameter: its u is 1/||g|| over all of them, <= u_D over cores
           "u_ratio": float(np.median(np.sqrt(arr["sq_grad_all"][:, None]) * u_d))}
    for rho in rhos:
        drift = {m: arr[f"{m}@{rho}"] - arr["sgd"] for m in ("sam", *DAS_ROWS)}
        # each predictor of SAM's drift: Theorem 5's first-order term and the two DAS drifts
        predictors = {"theory": 4 * lr * rho * u_d * arr["K"] * arr["cov"],
                      **{m: drift[m] for m in DAS_ROWS}}
        sam, total = drift["sam"], drift["sam"].sum(0)
        out[rho] = {
            "fit": {m: slope_corr(x.ravel(), sam.ravel()) for m, x in predictors.items()},
            "ratio": {m: float(np.median(total / x.sum(0))) for m, x in predictors.items()},
            "sign_per_step": float(np.mean(np.sign(sam) == np.sign(predictors["theory"]))),
            "sign_total": int((np.sign(total) == np.sign(out["mean_cov"])).sum()),
            "total": {"sam": total, **{m: drift[m].sum(0) for m in DAS_ROWS}},
            "points": {m: (drift[m].ravel(), sam.ravel()) for m in DAS_ROWS}}
    return out


def fmt(values, digits: int = 3) -> str:
    values = np.asarray(values, dtype=float)
    return (f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}" if len(values) > 1
            else f"{values[0]:.{digits}f}")


def report(args, results: dict[int, dict], wall: float) -> None:
    seeds, rho0 = sorted(results), args.rhos[0]
    first = results[seeds[0]]
    n_layers = len(first["layers"])

    def over_seeds(rho, key, method=None, digits=3, index=None, scale=1.0):
        values = [results[s][rho][key] for s in seeds]
        values = [v[method] if method else v for v in values]
        return fmt([scale * (v[index] if index is not None else v) for v in values], digits)

    labels = {"theory": "Theorem 5: 4 eta rho u_D K_l Cov_l", **DAS_ROWS}
    rows = [[rho, label, over_seeds(rho, "fit", m, index=0), over_seeds(rho, "fit", m, index=1),
             over_seeds(rho, "ratio", m)] for rho in args.rhos for m, label in labels.items()]
    signs = [[rho, over_seeds(rho, "sign_per_step", digits=1, scale=100),
              ", ".join(f"{results[s][rho]['sign_total']}/{n_layers}" for s in seeds)]
             for rho in args.rhos]
    seed_cols = [f"s{s}" for s in seeds]
    per_layer = [[name, *(f"{results[s]['mean_cov'][i]:+.2e}" for s in seeds),
                  *(f"{results[s][rho0]['total']['sam'][i]:+.2e}" for s in seeds),
                  *(f"{results[s][rho0]['total']['sam'][i] / results[s][rho0]['total'][m][i]:.2f}"
                    for m in DAS_ROWS for s in seeds)]
                 for i, name in enumerate(first["layers"])]
    measured = sum(r["seconds"] for r in results.values())
    layer_header = ["layer", *(f"mean Cov {c}" for c in seed_cols),
                    *(f"SAM total dQ {c}" for c in seed_cols),
                    *(f"SAM/{m.split('_')[1]} {c}" for m in DAS_ROWS for c in seed_cols)]
    text = render(
        "drift", n_layers=n_layers, n_seeds=len(seeds), steps=args.steps, rho=rho0,
        arguments=f"--root {args.root} --seeds {' '.join(map(str, seeds))} --steps {args.steps} "
                  f"--lr {args.lr} --rhos {' '.join(map(str, args.rhos))} --batch {args.batch}",
        machine=f"{machine_info()['cpu']}, {torch.get_num_threads()} threads, torch "
                f"{torch.__version__}",
        measured=f"{measured:.0f}", wall=f"{wall:.0f}", date=datetime.date.today().isoformat(),
        fit_table=markdown_table(["rho = alpha", "predictor of SAM's drift", "slope", "r",
                                  "median per-layer SAM total / predictor total"], rows),
        sign_table=markdown_table(["rho", "per step (%)", "per layer, summed"], signs),
        u_ratio=fmt([results[s]["u_ratio"] for s in seeds]),
        layer_table=markdown_table(layer_header, per_layer),
        figure=args.out.with_suffix(".png").name)
    atomic_write_text(args.out, text)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, (m, label) in zip(axes, DAS_ROWS.items(), strict=True):
        lim = max(np.abs(np.concatenate(results[s][rho0]["points"][m])).max() for s in seeds)
        for s in seeds:
            ax.scatter(*results[s][rho0]["points"][m], s=3, alpha=0.4, label=f"seed {s}")
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=1, label="y = x")
        ax.set_xscale("symlog", linthresh=lim * 1e-3)
        ax.set_yscale("symlog", linthresh=lim * 1e-3)
        ax.set(title=label, xlabel=f"{label} drift of Q_l (one step)",
               ylabel="SAM drift of Q_l (one step)")
        ax.legend(markerscale=4)
    fig.suptitle(f"TR-ResNet-20: one-step drifts from the same weights and batch "
                 f"(lr {args.lr}, rho = alpha = {rho0}, float64)")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/vision_cpu/normdyn_drift"))
    parser.add_argument("--out", type=Path, default=Path("results/normdyn_drift.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.05, 0.005],
                        help="SAM radii rho, each with DAS at alpha = rho; the first is plotted")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    args = parser.parse_args()
    if args.steps < 1 or args.lr <= 0 or min(args.rhos) <= 0:
        parser.error("--steps, --lr and --rhos must be positive")
    torch.set_num_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    results = {s: analyse(run_seed(args, s), args.lr, args.rhos) for s in args.seeds}
    report(args, results, time.perf_counter() - began)


if __name__ == "__main__":
    main()
