"""Every optimizer on the paper's tasks, plus overhead and memory -> results/optimizers.{md,csv}.

Builds the report of ``make reproduce-optimizers`` for SGD/Adam(W), SAM, ASAM, nuSAM, DAS, nBAR
and oBAR:

(i) the task tables, from the Hydra multiruns of the Makefile: ``experiment=table1`` and
    ``experiment=table1_paper`` (COVID Tucker completion, K = 4; Table 1's runs,
    ``<table1-root>/<protocol>/<optimizer>/seed<k>``) and ``experiment=fig1`` with
    ``task.batching=fresh task.noise=1.0`` (Tucker-2 denoising, K = 3;
    ``<fig1-root>/<optimizer>/seed<k>``), seeds 0, 1, 2, optimizer ``none`` (the experiment's
    base alone), ``sam``, ``asam``, ``nusam``, ``das``: final primary metric (the experiment's
    ``objective``), final Norm Deviation Q and its reduction vs the base optimizer on the same
    seed, time per step vs the base optimizer (interleaved timing on the seed-0 model, see (ii))
    and extra memory. nBAR/oBAR are defined for K = 2 core groups only: the report says why they
    refuse these models. Every optimizer reads its own file of ``configs/tuned/<experiment>``, so
    SAM and DAS take the experiment's rho/alpha (the paper's values) and ASAM, nuSAM, nBAR and
    oBAR their own configs' values.
(ii) the timing tables on many-core-groups models, reusing ``scripts/bench_optim.py``'s
    interleaved measurement (one process, one thread, round-robin blocks, median ratio):
    60 CPLinear((4,4),(4,4),8) layers (K = 4: SAM, ASAM, nuSAM, DAS vs SGD) and
    60 CPLinear((16,),(16,),8) layers (K = 2: nBAR, oBAR, DAS vs SGD), with the targets
    BAR, DAS <= 1.05x the base step time.
(iii) the memory table on 4 x nn.Linear(1024, 1024): extra bytes of SAM, ASAM, nuSAM and
    nuSAM(restore=copy), target nuSAM < 1% of SAM's.

Extra memory (:func:`extra_memory`) = the largest net growth of live tensor storages after the
optimizer is built, excluding the base optimizer's state: probed after the second backward pass
(two-pass methods; the gradient at w + e is on ``.grad`` again, the first one was freed) and
after the step (state kept between steps). Storages freed in exchange count negatively (DAS/BAR
re-home the cores into one flat buffer).

The measurements are not training runs: each is stored in ``<measure-root>/<name>.json`` and
redone only when its settings change (delete the file to re-measure). They run after the
training grids, on one process, so the timings do not compete with them.

    python scripts/compare_optimizers.py [--table1-root runs/table1]
        [--fig1-root runs/optimizers/fig1] [--measure-root runs/optimizers/measure]
    python scripts/compare_optimizers.py --quick --measure-root /tmp/m --out /tmp/opt
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from tensam.bench.optim import Bench, DeepCPRegression, measure
from tensam.cores import core_groups
from tensam.logging import atomic_write_text
from tensam.optim import build_optimizer
from tensam.reports.format import fmt_mean_std, machine_info, markdown_table, mean_std, render
from tensam.reports.runs import build, cached, config, method_of
from tensam.tasks import build_model

#: method -> optimizer config (configs/optimizer/<name>.yaml); "base": the experiment's base alone
CONFIGS = {"base": "none", "sam": "sam", "asam": "asam", "nusam": "nusam", "das": "das",
           "nbar": "nbar", "obar": "obar"}
LABELS = {"sam": "SAM", "asam": "ASAM", "nusam": "nuSAM", "das": "DAS", "nbar": "nBAR",
          "obar": "oBAR", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
#: the hyperparameters each method's row shows (read from the runs' stored configs)
SHOWN = {"sam": ("rho",), "asam": ("rho", "eta"), "nusam": ("rho", "power_iterations"),
         "das": ("alpha", "alpha_schedule"), "nbar": ("alpha", "alpha_schedule"),
         "obar": ("alpha", "alpha_schedule")}
#: where each optimizer's hyperparameters come from (configs/optimizer/*.yaml, the papers)
SOURCES = {
    "sam": "rho: the experiment's (table1*: 0.01, DAS paper App. B; fig1: 0.1, our choice, the "
           "paper states none)",
    "asam": "rho 0.5, eta 0.01: Kwon et al. (2021)'s ASAM default",
    "nusam": "rho 0.05 (nuSAM paper, Table 12 sweep {0.01, 0.02, 0.05}, Table 13 default), "
             "T = 1 power iteration (Section 5), 2-D parameters only (Algorithm 1), no "
             "perturbation delay",
    "das": "alpha: the experiment's (table1*: 0.001, DAS paper App. B, table1_paper decays it "
           "linearly; fig1: 0.1, our choice)",
    "nbar": "mu_0 = alpha 0.5, linear schedule (BAR paper, Tables 6 and 8)",
    "obar": "mu_0 = alpha 0.5, linear schedule (BAR paper, Tables 6 and 8)",
}
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Experiment:
    """One task table: a Hydra experiment and its extra overrides, where its runs live (``root``
    of the command line, then ``subdir``) and the paper's numbers (at the experiment's full
    step count) for the primary metric."""

    name: str
    title: str
    overrides: tuple[str, ...]
    root: str  # "table1" | "fig1"
    subdir: str
    paper: dict[str, float]

    def compose(self, method: str, *extra: str) -> dict:
        return config([f"experiment={self.name}", *self.overrides,
                       f"optimizer={CONFIGS[method]}", *extra])


#: the paper's Table 1 (R2, mean of 3 splits, 50,000 steps); it does not name a protocol
PAPER_TABLE1 = {"base": 0.9482, "sam": 0.9485, "das": 0.9484}
EXPERIMENTS = (
    Experiment("table1", "Table 1 task, protocol heldout (`experiment=table1`): COVID Tucker "
               "completion, rank (8,6,8), K = 4, AdamW base, metric R2 on the 70% held-out "
               "entries", (), "table1", "heldout", PAPER_TABLE1),
    Experiment("table1_paper", "Table 1 task, protocol paper (`experiment=table1_paper`): "
               "Bernoulli(0.3) mask, sum of squared errors, K = 4, Adam base, metric R2 on "
               "the observed entries", (), "table1", "paper", PAPER_TABLE1),
    Experiment("fig1", "Figure 1 task (`experiment=fig1 task.batching=fresh task.noise=1.0`): "
               "Tucker-2 denoising A G B^T, K = 3, SGD base (no momentum), metric relative "
               "error to the clean target (lower is better)",
               ("task.batching=fresh", "task.noise=1.0"), "fig1", "", {}),
)


def not_applicable(experiment: Experiment, method: str) -> str | None:
    """Why the optimizer cannot be built for the experiment's model (None if it can)."""
    cfg = experiment.compose(method)
    _, model = build(cfg)
    try:
        build_optimizer(cfg["optimizer"], model, total_steps=cfg["steps"])
    except ValueError as err:
        ks = sorted({g.K for g in core_groups(model)})
        return f"not applicable (K={','.join(map(str, ks))}): {err}"
    return None


def load_runs(experiment: Experiment, root: Path) -> dict[str, dict[int, dict]]:
    """method -> seed -> summary of the experiment's runs under ``root``."""
    runs: dict[str, dict[int, dict]] = {}
    for method, name in CONFIGS.items():
        for seed in SEEDS:
            path = root / experiment.subdir / name / f"seed{seed}" / "summary.json"
            if path.exists():
                runs.setdefault(method, {})[seed] = json.loads(path.read_text())
    return runs


# ---------------------------------------------------------------------------- measurements


def live_storages(model: nn.Module) -> dict[int, int]:
    """data_ptr -> nbytes of every tensor storage reachable from Python objects, plus the
    parameters' gradients (which get a Python object only when accessed)."""
    gc.collect()
    tensors = [t for t in gc.get_objects() if type(t) in (torch.Tensor, nn.Parameter)]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def extra_memory(opt_cfg: dict, model: nn.Module, loss_fn) -> int:
    """Peak net bytes the optimizer wrapper adds (see the module docstring)."""
    loss_fn().backward()
    before = sum(live_storages(model).values())
    optimizer = build_optimizer(opt_cfg, model, total_steps=10)
    base = getattr(optimizer, "base", optimizer)
    held, calls = [], 0

    def probe() -> None:
        state = {t.untyped_storage().data_ptr() for s in base.state.values()
                 for t in s.values() if torch.is_tensor(t)}
        held.append(sum(n for p, n in live_storages(model).items() if p not in state) - before)

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        value = loss.item()  # the losses are not the optimizer's: no tensor stays alive
        del loss
        if calls > 1:  # after the second backward of a two-pass method, at w + e
            probe()
        return value

    optimizer.step(closure)
    probe()
    return max(held)


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure_task(experiment: Experiment, methods: list[str], quick: bool) -> dict:
    """Interleaved step times (bench_optim.measure) and extra memory of ``methods`` on the
    seed-0 model of ``experiment``."""
    cfg = experiment.compose("base", "seed=0")
    task, _ = build(cfg)

    def model(task):
        return build_model(cfg["model"], task)

    overrides = {m: [f"experiment={experiment.name}", *experiment.overrides,
                     f"optimizer={CONFIGS[m]}", "seed=0"] for m in methods}
    bench = Bench(experiment.name, experiment.name, lambda: task, model, overrides, {},
                  20 if quick else 200, 4 if quick else 30, 10 if quick else 100)
    load = os.getloadavg()
    timing = measure(bench)
    memory = {}
    for method, opts in overrides.items():
        fresh = model(task)
        memory[method] = extra_memory(config(opts)["optimizer"], fresh,
                                      lambda fresh=fresh: task.loss(fresh, task.batch(0)))
    return {"timing": timing, "extra_bytes": memory,
            "parameter_bytes": parameter_bytes(model(task)), "load_before": load,
            "load_after": os.getloadavg(), "machine": machine_info()}


def measure_cp(name: str, in_shape, out_shape, methods: tuple[str, ...], quick: bool) -> dict:
    """bench_optim's interleaved timing of ``methods`` over SGD on 60 CPLinear layers."""
    task = DeepCPRegression(60, in_shape, out_shape, 8)
    sgd = ["optimizer/base=sgd"]
    overrides = {"base": ["optimizer=sgd"], **{m: [f"optimizer={m}", *sgd] for m in methods}}
    targets = {m: 1.05 for m in methods if m in ("das", "nbar", "obar")}
    bench = Bench(name, name, lambda: task, DeepCPRegression.model, overrides, targets,
                  5 if quick else 20, 4 if quick else 30, 3 if quick else 20)
    load = os.getloadavg()
    timing = measure(bench)
    model = task.model()
    return {"timing": timing, "cores": sum(g.K for g in core_groups(model)),
            "groups": len(core_groups(model)), "parameter_bytes": parameter_bytes(model),
            "load_before": load, "load_after": os.getloadavg(), "machine": machine_info(),
            "warmup": bench.warmup, "blocks": bench.blocks, "steps": bench.steps}


class Matrices(nn.Module):
    """A stack of ``depth`` d x d linear layers with biases (float32)."""

    def __init__(self, d: int = 1024, depth: int = 4):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(d, d) for _ in range(depth)])
        self.x = torch.randn(16, d)

    def forward(self):
        return torch.tanh(self.layers(self.x)).square().mean()


MATRICES = {"SAM": ["optimizer=sam"], "ASAM": ["optimizer=asam"], "nuSAM": ["optimizer=nusam"],
            "nuSAM (restore=copy)": ["optimizer=nusam", "optimizer.restore=copy"]}


def measure_matrices(d: int = 1024, depth: int = 4) -> dict:
    """Extra memory of each two-pass method (own config over Adam) on :class:`Matrices`."""
    rows = {}
    for label, overrides in MATRICES.items():
        torch.manual_seed(0)
        model = Matrices(d, depth)
        opt_cfg = config(overrides)["optimizer"]
        rows[label] = {"extra_bytes": extra_memory(opt_cfg, model, model), "optimizer": opt_cfg}
    return {"rows": rows, "parameter_bytes": parameter_bytes(Matrices(d, depth))}


def measurements(root: Path, applicable: dict[str, list[str]], quick: bool) -> dict:
    """Every measurement, from ``root`` or measured now (one at a time, one thread)."""
    out = {e.name: cached(root / f"{e.name}.json", {"methods": applicable[e.name],
                                                    "quick": quick},
                          lambda e=e: measure_task(e, applicable[e.name], quick))
           for e in EXPERIMENTS}
    for name, shape, methods in (("cp_k4", ((4, 4), (4, 4)), ("sam", "asam", "nusam", "das")),
                                 ("cp_k2", ((16,), (16,)), ("nbar", "obar", "das"))):
        out[name] = cached(root / f"{name}.json", {"methods": list(methods), "quick": quick},
                           lambda n=name, s=shape, m=methods: measure_cp(n, *s, m, quick))
    out["matrices"] = cached(root / "matrices.json", {"rows": list(MATRICES)}, measure_matrices)
    return out


# ---------------------------------------------------------------------------- the report


def ratio_cell(r: dict) -> str:
    lo, hi = r["paired_ratio_iqr"]
    return f"{r['ratio']:.3f}x (IQR {lo:.2f}-{hi:.2f})"


def verdict(r: dict) -> str:
    return "" if r.get("pass") is None else ("PASS" if r["pass"] else "FAIL")


def hyperparameters(method: str, opt: dict) -> str:
    """The row's method hyperparameters, from a composed optimizer config."""
    if method == "base":
        return f"lr {opt['base']['lr']:g}"
    return ", ".join(f"{k} {opt[k]:g}" if isinstance(opt[k], float) else f"{k} {opt[k]}"
                     for k in SHOWN[method])


def task_rows(experiment: Experiment, runs: dict, na: dict, measured: dict, steps: int,
              csv_rows: list):
    """Markdown rows of one experiment's table (and its CSV rows)."""
    metric = experiment.compose("base")["objective"]
    rows = []
    base_runs = runs.get("base", {})
    base_label = method_of(experiment.compose("base"))
    for name in CONFIGS:
        label = f"{base_label} (base)" if name == "base" else LABELS[name]
        hyper = hyperparameters(name, experiment.compose(name)["optimizer"])
        paper = experiment.paper.get(name)
        paper_cell = f"{paper:.4f}" if paper is not None else "—"
        if na.get(name):
            rows.append([label, hyper, na[name].split(":")[0], paper_cell, "—", "—", "—", "—",
                         "—"])
            continue
        seeds = sorted(runs.get(name, {}))
        if not seeds:
            rows.append([label, hyper, "missing", paper_cell, "", "", "", "", ""])
            continue
        values = [runs[name][s][metric] for s in seeds]
        q = [runs[name][s]["norm/Q"] for s in seeds]
        red = [1 - runs[name][s]["norm/Q"] / base_runs[s]["norm/Q"] for s in seeds]
        train_ratio = [runs[name][s]["seconds_per_step"] / base_runs[s]["seconds_per_step"]
                       for s in seeds]
        for s in seeds:
            for quantity, value in ((metric, runs[name][s][metric]),
                                    ("Q_final", runs[name][s]["norm/Q"]),
                                    ("Q_reduction_vs_base", 1 - runs[name][s]["norm/Q"]
                                     / base_runs[s]["norm/Q"]),
                                    ("train_seconds_per_step", runs[name][s]["seconds_per_step"])):
                csv_rows.append(["task", f"{experiment.name}-steps{steps}", name, s, quantity,
                                 value])
        timing = measured["timing"][name]
        extra = measured["extra_bytes"][name]
        csv_rows.append(["task", experiment.name, name, 0, "step_time_ratio_interleaved",
                         timing["ratio"]])
        csv_rows.append(["task", experiment.name, name, 0, "extra_bytes", extra])
        time_cell = "1 (reference)" if name == "base" else ratio_cell(timing)
        extra_cell = ("0 (reference)" if name == "base" else
                      f"{extra:,} ({extra / measured['parameter_bytes']:.2f}x params)")
        rows.append([label, hyper, f"{fmt_mean_std(*mean_std(values))}", paper_cell,
                     fmt_mean_std(*mean_std(q), digits=1),
                     "0 (reference)" if name == "base" else fmt_mean_std(*mean_std(red)),
                     time_cell, fmt_mean_std(*mean_std(train_ratio), digits=2), extra_cell])
    return metric, rows


def timing_table(name: str, measured: dict, csv_rows: list) -> str:
    rows = []
    for method, r in measured["timing"].items():
        ms = r["ms_per_step"]
        label = LABELS["sgd"] + " (base)" if method == "base" else LABELS[method]
        target = "" if r["target"] is None else f"<= {r['target']:.2f}x"
        rows.append([label, f"{ms['total']:.3f}", ratio_cell(r), f"{r['cpu_ratio']:.3f}x",
                     target, verdict(r)])
        csv_rows.append(["timing", name, method, 0, "ms_per_step", ms["total"]])
        csv_rows.append(["timing", name, method, 0, "ratio", r["ratio"]])
    return markdown_table(["method", "ms/step", "ratio to base (paired IQR)", "CPU-time ratio",
                           "target", "result"], rows)


def report(tables: list, measured: dict, training_seconds: float, csv_rows: list) -> str:
    """results/optimizers.md (template ``optimizers.md``): ``tables`` holds (experiment, metric,
    rows, steps, full steps, why each method is not applicable) per task table."""
    info = machine_info()
    reduced = [f"{e.name} {steps:,} (protocol: {full:,})" for e, _, _, steps, full, _ in tables]
    load = [measured[e.name]["load_before"] for e in EXPERIMENTS]
    load += [measured[k]["load_before"] for k in ("cp_k4", "cp_k2")]
    if any(steps < full for _, _, _, steps, full, _ in tables):
        steps_note = (f"**REDUCED STEPS: {', '.join(reduced)}. The task metrics below are NOT the "
                      "protocol's and not comparable to the paper's numbers, which are shown in "
                      "their own column, labelled, at the paper's 50,000 steps.**")
    else:
        steps_note = f"Steps: {', '.join(reduced)}."
    task_tables = []
    for experiment, metric, rows, steps, full, na in tables:
        note = f"ours, {steps:,} steps" + (", REDUCED" if steps < full else "")
        task_tables += [f"### {experiment.title}", "",
                        markdown_table(["optimizer", "hyperparameters", f"{metric} ({note})",
                                        "paper, 50,000 steps" if experiment.paper else "paper",
                                        "Q final", "Q reduction vs base", "time/step vs base "
                                        "(interleaved)", "time/step vs base (training runs)",
                                        "extra memory, bytes"], rows)]
        refused = {m: why for m, why in na.items() if why}
        if refused:
            task_tables += [f"{', '.join(LABELS[m] for m in refused)}: the optimizer refuses "
                            "the model: " + "; ".join(dict.fromkeys(
                                why.split(": ", 1)[1] for why in refused.values())) + ".", ""]
    cp = {"cp_k4": "60 CPLinear((4,4),(4,4), rank 8) layers with ReLU: K = 4, 60 core groups "
                   "(240 cores)",
          "cp_k2": "60 CPLinear((16,),(16,), rank 8) layers with ReLU (each a rank-8 matrix "
                   "factorization): K = 2, 60 core groups (120 cores)"}
    timing_tables = []
    for key, title in cp.items():
        m = measured[key]
        timing_tables += [f"### {title}", "",
                          f"Warm-up {m['warmup']} steps per method, {m['blocks']} blocks x "
                          f"{m['steps']} steps per method; load average "
                          f"{m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after.",
                          "", timing_table(key, m, csv_rows)]
    mem = measured["matrices"]
    rows, sam = [], mem["rows"]["SAM"]["extra_bytes"]
    for label, r in mem["rows"].items():
        b = r["extra_bytes"]
        rows.append([label, f"{b:,}", f"{b / mem['parameter_bytes']:.4f}",
                     f"{100 * b / sam:.2f}%"])
        csv_rows.append(["memory", "matrices", label, 0, "extra_bytes", b])
    nusam = mem["rows"]["nuSAM"]["extra_bytes"] / sam
    targets = []
    for key in cp:
        for method, r in measured[key]["timing"].items():
            if r["target"] is not None:
                targets.append([f"{LABELS[method]} step time on {key} (K = {key[-1]})",
                                f"<= {r['target']:.2f}x base", f"{r['ratio']:.3f}x",
                                f"**{verdict(r)}**"])
    targets.append(["nuSAM extra memory on 4 x Linear(1024, 1024)", "< 1% of SAM's",
                    f"{100 * nusam:.2f}%", f"**{'PASS' if nusam < 0.01 else 'FAIL'}**"])
    return render(
        "optimizers", date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", cpu=info["cpu"],
        cpus=info["cpus"], torch=info["torch"], python=info["python"],
        training=f"{training_seconds:.0f}", load=", ".join(f"{la[0]:.1f}" for la in load),
        steps=steps_note, sources="; ".join(f"{LABELS[m]}: {s}" for m, s in SOURCES.items()),
        targets=markdown_table(["target", "bound", "measured", "result"], targets),
        task_tables="\n".join(task_tables), timing_tables="\n".join(timing_tables),
        parameter_bytes=f"{mem['parameter_bytes']:,}",
        memory_table=markdown_table(["optimizer", "extra memory (bytes)", "/ parameter bytes",
                                     "/ SAM's"], rows),
        nusam=f"{100 * nusam:.2f}", nusam_verdict="PASS" if nusam < 0.01 else "FAIL")


def write_csv(path: Path, rows: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", "setting", "optimizer", "seed", "quantity", "value"])
    writer.writerows([*r[:5], f"{r[5]:.6g}" if isinstance(r[5], float) else r[5]]
                     for r in rows)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table1-root", type=Path, default=Path("runs") / "table1")
    parser.add_argument("--fig1-root", type=Path, default=Path("runs") / "optimizers" / "fig1")
    parser.add_argument("--measure-root", type=Path,
                        default=Path("runs") / "optimizers" / "measure")
    parser.add_argument("--quick", action="store_true", help="short timing measurements")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    roots = {"table1": args.table1_root, "fig1": args.fig1_root}
    runs = {e.name: load_runs(e, roots[e.root]) for e in EXPERIMENTS}
    missing = [f"{e.name}/{m}" for e in EXPERIMENTS for m in ("base", "sam", "das")
               if len(runs[e.name].get(m, {})) < len(SEEDS)]
    if missing:
        parser.error(f"runs missing for {missing}; run `make reproduce-optimizers` first")
    na = {e.name: {m: not_applicable(e, m) for m in CONFIGS} for e in EXPERIMENTS}
    applicable = {e: [m for m, why in reasons.items() if why is None] for e, reasons in na.items()}
    measured = measurements(args.measure_root, applicable, args.quick)
    csv_rows: list = []
    tables = []
    for e in EXPERIMENTS:
        steps = runs[e.name]["base"][SEEDS[0]]["steps"]
        metric, rows = task_rows(e, runs[e.name], na[e.name], measured[e.name], steps, csv_rows)
        tables.append((e, metric, rows, steps, e.compose("base")["steps"], na[e.name]))
    training = sum(s["seconds"] for r in runs.values() for seeds in r.values()
                   for s in seeds.values())
    text = report(tables, measured, training, csv_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "optimizers.md", text)
    write_csv(args.out / "optimizers.csv", csv_rows)
    print(text)
    print(f"wrote {args.out / 'optimizers.md'} and {args.out / 'optimizers.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
