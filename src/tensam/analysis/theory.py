"""The norm-dynamics theorems as measurements (float64), on Tucker-2 denoising.

At a few points w_t of an SGD trajectory on ``task=tucker2_denoise`` (fresh noise, a = 1) we take
ONE step of size eta from w_t and compare the finite difference dQ/dt ~ (Q(w_{t+1}) - Q(w_t))/eta
with the theorems' rates:

* Theorem 3 (SAM, one core group, K = 3): dQ/dt = 4 rho u K Cov(||G_k||^2, ||g_k||^2) + O(rho^2);
* Theorem 5 (SAM, D = 2 Tucker-2 layers, W = W_1 W_2): dQ_l/dt = 4 rho u_D K_l Cov_l + O(rho^2)
  with the GLOBAL u_D = (sum_{k,l} ||g_{k,l}||^2)^(-1/2) (the per-layer u_l is shown for contrast);
* Corollary 1 (SGD): dQ/dt = 0; Theorem 1's identity <G_k, g_k> = <Phi, grad f> for every k;
* Appendix C (SGD with momentum 0.9): the drift of Q over a fixed time horizon, against plain SGD
  and SAM at the same effective step size eta / (1 - beta).

"flow" is the eta -> 0 limit of the same step, computed exactly from the gradient the step used
(dQ/dt = sum_k 2 (s_k - s_bar) d s_k/dt with d s_k/dt = -2 <G_k, g~_k>), so that the table splits
the error into discretisation (FD vs flow, O(eta)) and the theorem's remainder (flow vs
prediction, O(rho^2)). Writes ``results/theory.md`` and ``results/theory.png``.

    python scripts/theory.py [--out results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tensam.cores import core_groups  # noqa: E402
from tensam.logging import atomic_write_text  # noqa: E402
from tensam.metrics.norm_dynamics import layer_covariance, layer_norm_deviation  # noqa: E402
from tensam.norms import CoreIndex  # noqa: E402
from tensam.optim import build_optimizer  # noqa: E402
from tensam.reports.format import render  # noqa: E402
from tensam.reports.runs import build, config  # noqa: E402
from tensam.tensorized import Tucker  # noqa: E402
from tensam.training import LoopConfig, make_closure, train_step  # noqa: E402

ETAS = (1e-2, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6)
RHO = 0.01
RHOS = (0.1, 0.03, 0.01, 0.003, 0.001)
POINTS = (0, 300, 600, 900, 1200)  # trajectory steps at which the rates are measured
BETA = 0.9
CONVERGED = 4000  # full-batch GD steps before the near-convergence measurement
HORIZON = 0.5  # time eta_eff * steps over which the momentum drift is measured
#: configs/task/tucker2_denoise.yaml and configs/model/tucker2.yaml (unbalanced start), float64
TASK = ["task=tucker2_denoise", "model=tucker2", "task.noise=1.0", "task.dtype=float64"]


def tucker2(batching: str = "fresh"):
    """(task, model): Tucker-2 denoising with fresh noise each step or the fixed draw (full)."""
    return build(config([*TASK, f"task.batching={batching}"]))


class TwoLayerTucker2(nn.Module):
    """W = W_1 W_2 with W_1 (20 x 8), W_2 (8 x 20) each a Tucker-2 A G B^T: D = 2 core groups."""

    def __init__(self, seed: int = 0):
        super().__init__()
        kw = dict(init="normal", std=0.3, dtype=torch.float64)  # unbalanced start in both layers
        self.layer1 = Tucker((20, 8), (3, 3), seed=seed, scales=(1.0, 3.0, 1.0), **kw)
        self.layer2 = Tucker((8, 20), (3, 3), seed=seed + 1, scales=(3.0, 1.0, 1.0), **kw)

    def forward(self) -> torch.Tensor:
        return self.layer1() @ self.layer2()


def optimizer(model: nn.Module, method: str, eta: float, rho: float = RHO, momentum: float = 0.0):
    overrides = [f"optimizer={method}", "optimizer/base=sgd", f"optimizer.base.lr={eta}",
                 f"optimizer.base.momentum={momentum}", "optimizer.base.weight_decay=0"]
    if method == "sam":
        overrides.append(f"optimizer.rho={rho}")
    return build_optimizer(config(overrides)["optimizer"], model)


def trajectory_states(task, model: nn.Module, points=POINTS, lr: float = 5e-4,
                      method: str = "none", rho: float = RHO) -> list[tuple[int, dict]]:
    """Model states at the steps ``points`` of an SGD (or SAM) run from the initialisation."""
    opt, states = optimizer(model, method, lr, rho), []
    for step in range(max(points) + 1):
        if step in points:
            states.append((step, {k: v.clone() for k, v in model.state_dict().items()}))
        train_step(task, model, opt, task.batch(step))
    return states


def measure_step(task, model, state, step, method, eta, rho=RHO) -> dict[str, np.ndarray]:
    """One step from ``state``: per-layer FD rate, flow rate, Theorem 3/5 prediction."""
    model.load_state_dict(state)
    index = CoreIndex(core_groups(model))
    opt = optimizer(model, method, eta, rho)
    at_w = {}

    def measure():  # on the first gradient, at w, before the update
        at_w["sq_core"], at_w["sq_grad"] = index.core_sq_norms(), index.grad_sq_norms()
        at_w["before"] = [c.detach().clone() for c in index.cores]

    opt.step(make_closure(task, model, opt, [task.batch(step)], LoopConfig(1), measure))
    sq_core, sq_grad, before = at_w["sq_core"], at_w["sq_grad"], at_w["before"]
    q0 = layer_norm_deviation(index, sq_core)
    cov = layer_covariance(index, sq_core, sq_grad)
    K = index.K.to(cov)
    u_global = sq_grad.sum().rsqrt()
    u_layer = index.layer_sum(sq_grad).rsqrt()
    q1 = layer_norm_deviation(index, index.core_sq_norms())
    inner = torch.stack([(g0 * c.grad).sum() for g0, c in zip(before, index.cores, strict=True)])
    flow = index.layer_sum(2 * (sq_core - index.layer_mean(sq_core)) * (-2 * inner))
    return {"fd": ((q1 - q0) / eta).numpy(), "flow": flow.numpy(),
            "pred": (4 * rho * u_global * K * cov).numpy(),
            "pred_layer_u": (4 * rho * u_layer * K * cov).numpy(),
            "grad_norm": sq_grad.sum().sqrt().numpy(),
            "inner_spread": (index.layer_sum((inner - index.layer_mean(inner)).abs())
                             / index.layer_sum(inner.abs())).numpy()}


def over_points(task, model, states, method, eta, rho=RHO) -> dict[str, np.ndarray]:
    """:func:`measure_step` at every trajectory point, stacked (points x layers)."""
    rows = [measure_step(task, model, s, step, method, eta, rho) for step, s in states]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over points and layers of |a - b| / |b|."""
    return float(np.mean(np.abs(a - b) / np.abs(b)))


def drift(task, model, state, start, method, eta, momentum=0.0) -> float:
    """Relative change (Q_end - Q_start) / Q_start over ``HORIZON`` time units (summed layers)."""
    model.load_state_dict(state)
    index = CoreIndex(core_groups(model))
    opt = optimizer(model, method, eta, momentum=momentum)
    q0 = float(layer_norm_deviation(index, index.core_sq_norms()).sum())
    eta_eff = eta / (1 - momentum)
    for step in range(start, start + round(HORIZON / eta_eff)):
        train_step(task, model, opt, task.batch(step))
    return (float(layer_norm_deviation(index, index.core_sq_norms()).sum()) - q0) / q0


def table(header: list[str], rows: list[list]) -> str:
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    task, model = tucker2()
    models = {"Tucker-2 (K=3)": model, "2-layer Tucker-2 (D=2, K_l=3)": TwoLayerTucker2()}
    states = {name: trajectory_states(task, m) for name, m in models.items()}
    single, multi = models.values()
    s_single, s_multi = states.values()

    rows, curves = [], {"Thm 3 FD vs pred": [], "Thm 5 FD vs pred": [], "SGD |FD| / |SAM pred|": []}
    sgd_rows = []
    for eta in ETAS:
        s = over_points(task, single, s_single, "sam", eta)
        m = over_points(task, multi, s_multi, "sam", eta)
        g = over_points(task, single, s_single, "none", eta)
        rows.append([f"{eta:.0e}", float(s["fd"].mean()), float(s["pred"].mean()),
                     rel(s["fd"], s["flow"]), rel(s["flow"], s["pred"]), rel(s["fd"], s["pred"]),
                     rel(m["fd"], m["flow"]), rel(m["fd"], m["pred"]),
                     rel(m["fd"], m["pred_layer_u"])])
        ratio = float(np.mean(np.abs(g["fd"]) / np.abs(s["pred"])))
        sgd_rows.append([f"{eta:.0e}", float(np.abs(g["fd"]).mean()), ratio,
                         float(np.abs(g["flow"]).mean()), float(g["inner_spread"].max())])
        curves["Thm 3 FD vs pred"].append(rel(s["fd"], s["pred"]))
        curves["Thm 5 FD vs pred"].append(rel(m["fd"], m["pred"]))
        curves["SGD |FD| / |SAM pred|"].append(ratio)
    rho_rows, residuals = [], []
    for rho in RHOS:
        s = over_points(task, single, s_single, "sam", ETAS[-1], rho)
        m = over_points(task, multi, s_multi, "sam", ETAS[-1], rho)
        res = float(np.abs(s["flow"] - s["pred"]).mean())
        residuals.append(res)
        rho_rows.append([rho, float(s["pred"].mean()), res, res / rho**2,
                         rel(s["flow"], s["pred"]), rel(m["flow"], m["pred"])])
    full_task, full_model = tucker2("full")
    gd_end = trajectory_states(full_task, full_model, (CONVERGED,), lr=1e-3)
    runs = [("GD", rho, gd_end) for rho in RHOS]
    runs += [(f"SAM, rho = {rho:g}", rho, trajectory_states(
        *tucker2("full"), (CONVERGED,), lr=1e-3, method="sam", rho=rho)) for rho in RHOS[:3]]
    conv_rows = []
    for name, rho, end in runs:
        s = over_points(full_task, single, end, "sam", ETAS[-1], rho)
        conv_rows.append([name, rho, float(s["grad_norm"].mean()), float(s["pred"].mean()),
                          float(s["flow"].mean()), float(s["flow"].mean()) / rho**2])
    start, state = s_single[2]
    mom_rows = []
    for batching in ("fresh", "full"):
        drift_task = tucker2(batching)[0]
        for eta in (1e-3, 1e-4, 1e-5):
            eff = eta / (1 - BETA)
            mom_rows.append([batching, f"{eta:.0e}", round(HORIZON / eff),
                             drift(drift_task, single, state, start, "none", eta, BETA),
                             drift(drift_task, single, state, start, "none", eff),
                             drift(drift_task, single, state, start, "sam", eff)])
    text = render(
        "theory", points=list(POINTS), rho=RHO, converged=CONVERGED, horizon=HORIZON,
        start=POINTS[2], beta=BETA, runtime=f"{time.perf_counter() - started:.0f}",
        sam_table=table(["eta", "Thm3 mean FD dQ/dt", "Thm3 mean pred", "Thm3 FD vs flow",
                         "Thm3 flow vs pred", "Thm3 FD vs pred", "Thm5 FD vs flow",
                         "Thm5 FD vs pred", "Thm5 FD vs pred with per-layer u_l"], rows),
        sgd_table=table(["eta", "mean |FD dQ/dt|", "|FD| / |SAM pred| (rho = 0.01)",
                         "mean |flow|", "max spread of <G_k,g_k>"], sgd_rows),
        rho_table=table(["rho", "Thm3 mean pred", "mean |flow - pred|", "|flow - pred| / rho^2",
                         "Thm3 rel. error", "Thm5 rel. error"], rho_rows),
        converged_table=table(["converged by", "rho", "||g||", "pred 4 rho u K Cov",
                               "flow dQ/dt", "flow / rho^2"], conv_rows),
        momentum_table=table(["batching", "eta", "steps", "SGD+momentum 0.9", "SGD (eta_eff)",
                              "SAM (eta_eff)"], mom_rows))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "theory.md", text)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, ys in curves.items():
        left.loglog(ETAS, ys, "o-", label=label)
    left.set(xlabel="step size eta", ylabel="relative error", title=f"one-step rates, rho = {RHO}")
    left.legend(fontsize=8)
    right.loglog(RHOS, residuals, "o-", label="|flow - pred| (Thm 3)")
    right.loglog(RHOS, [residuals[0] * (r / RHOS[0]) ** 2 for r in RHOS], "k:", label="rho^2")
    right.set(xlabel="rho", ylabel="|dQ/dt - 4 rho u K Cov|", title="remainder, eta = 1e-6")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "theory.png", dpi=130)
    print(text)


if __name__ == "__main__":
    main()
