"""Every optimizer on the paper's tasks, plus overhead and memory -> results/optimizers.{md,csv}.

One invocation measures, for SGD/Adam(W), SAM, ASAM, nuSAM, DAS, nBAR and oBAR:

(i) the task tables: ``experiment=table1``, ``experiment=table1_paper`` (COVID Tucker completion,
    K = 4) and ``experiment=fig1`` with ``task.batching=fresh task.noise=1.0`` (Tucker-2
    denoising, K = 3), seeds 0, 1, 2: final primary metric (the experiment's ``objective``),
    final Norm Deviation Q and its reduction vs the base optimizer on the same seed, time per
    step vs the base optimizer (interleaved timing on the seed-0 model, see (ii)) and extra
    memory. nBAR/oBAR are defined for K = 2 core groups only and are reported as not applicable
    on these models. SAM and DAS take the experiment's rho/alpha (the paper's values); ASAM,
    nuSAM, nBAR and oBAR keep their own configs' values for any key the experiment pins;
    :func:`own_overrides` derives those overrides and the report lists them.
(ii) the timing tables on many-core-groups models, reusing ``scripts/bench_optim.py``'s
    interleaved measurement (one process, one thread, round-robin blocks, median ratio):
    60 CPLinear((4,4),(4,4),8) layers (K = 4: SAM, ASAM, nuSAM, DAS vs SGD) and
    60 CPLinear((16,),(16,),8) layers (K = 2: nBAR, oBAR, DAS vs SGD), with the targets
    BAR, DAS <= 1.05x the base step time.
(iii) the memory table on 4 x nn.Linear(1024, 1024): extra bytes of SAM, ASAM, nuSAM and
    nuSAM(restore=copy), target nuSAM < 1% of SAM's.

Extra memory (:func:`extra_memory`) = the largest net growth of live tensor storages after the
optimizer is built, excluding the base optimizer's state: probed at the start of the second
forward pass (two-pass methods) and after the step (state kept between steps). Storages freed
in exchange count negatively (DAS/BAR re-home the cores into one flat buffer).

Jobs run through ``_common.run_jobs`` into ``runs/optimizers/`` and are resumable: training
runs first (``--workers`` processes), then the measurements on one worker so that the timings
do not compete with this script's own training runs.

    python scripts/compare_optimizers.py                     # reduced steps (table1* 10,000)
    python scripts/compare_optimizers.py --full              # the protocol: 50,000 / 6000 steps
    python scripts/compare_optimizers.py --steps table1=5000 table1_paper=5000 fig1=6000
    python scripts/compare_optimizers.py --quick --out /tmp/opt   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import (
    REPO,
    Job,
    append_jsonl,
    compose,
    fmt_mean_std,
    load_summaries,
    machine_info,
    markdown_table,
    mean_std,
    read_jsonl,
    resolved,
    run_jobs,
    write_summary,
)
from bench_optim import Bench, DeepCPRegression, compose_config, measure
from omegaconf import OmegaConf
from torch import nn

from tensam.cores import core_groups
from tensam.logging import atomic_write_text
from tensam.optim import METHODS, TwoPassOptimizer, build_optimizer
from tensam.tasks import build_task
from tensam.train import run

SEEDS = (0, 1, 2)
#: method configs (configs/optimizer/<name>.yaml) compared against the experiment's base optimizer
METHOD_CONFIGS = ("sam", "asam", "nusam", "das", "nbar", "obar")
#: configs whose hyperparameters come from their own papers, not from the experiment's pins
OWN_CONFIG = ("asam", "nusam", "nbar", "obar")
LABELS = {"sam": "SAM", "asam": "ASAM", "nusam": "nuSAM", "das": "DAS", "nbar": "nBAR",
          "obar": "oBAR", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
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


@dataclass(frozen=True)
class Experiment:
    """One task table: a Hydra experiment, extra overrides, the base optimizer and the paper's
    numbers (at the experiment's full step count) for the primary metric."""

    name: str
    title: str
    overrides: tuple[str, ...]
    base: str
    paper: dict[str, float]
    reduced_steps: int
    log_every: int


#: the paper's Table 1 (R2, mean of 3 splits, 50,000 steps); it does not name a protocol
PAPER_TABLE1 = {"base": 0.9482, "sam": 0.9485, "das": 0.9484}
EXPERIMENTS = (
    Experiment("table1", "Table 1 task, protocol heldout (`experiment=table1`): COVID Tucker "
               "completion, rank (8,6,8), K = 4, AdamW base, metric R2 on the 70% held-out "
               "entries", (), "adam", PAPER_TABLE1, 10000, 1000),
    Experiment("table1_paper", "Table 1 task, protocol paper (`experiment=table1_paper`): "
               "Bernoulli(0.3) mask, sum of squared errors, K = 4, Adam base, metric R2 on "
               "the observed entries", (), "adam", PAPER_TABLE1, 10000, 1000),
    Experiment("fig1", "Figure 1 task (`experiment=fig1 task.batching=fresh task.noise=1.0`): "
               "Tucker-2 denoising A G B^T, K = 3, SGD base (no momentum), metric relative "
               "error to the clean target (lower is better)",
               ("task.batching=fresh", "task.noise=1.0"), "sgd", {}, 6000, 100),
)
QUICK_STEPS = 60


def hydra_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def optimizer_of(overrides: list[str]) -> dict:
    """The resolved ``optimizer`` entry of the config composed with ``overrides``."""
    return OmegaConf.to_container(compose(overrides).optimizer, resolve=True)


def own_overrides(experiment: Experiment, name: str) -> list[str]:
    """``optimizer.<key>=<own value>`` for every key of config ``name`` that the experiment pins
    to another value (only for :data:`OWN_CONFIG`; SAM and DAS take the experiment's values)."""
    if name not in OWN_CONFIG:
        return []
    own = optimizer_of([f"optimizer={name}"])
    pinned = optimizer_of([f"experiment={experiment.name}", f"optimizer={name}"])
    keys = METHODS[own["method"]]
    return [f"optimizer.{k}={hydra_value(own[k])}" for k in keys
            if k in own and pinned.get(k) != own[k]]


def method_overrides(experiment: Experiment, name: str) -> list[str]:
    """Hydra overrides of optimizer ``name`` ('base' or a method config) on ``experiment``."""
    config = experiment.base if name == "base" else name
    return [f"experiment={experiment.name}", *experiment.overrides, f"optimizer={config}",
            *own_overrides(experiment, name)]


def not_applicable(overrides: list[str]) -> str | None:
    """Why the optimizer cannot be built for the experiment's model (None if it can)."""
    cfg = compose_config(overrides)
    model = build_task(cfg["task"], cfg["model"]).build_model()
    try:
        build_optimizer(cfg["optimizer"], model, total_steps=int(compose(overrides).steps))
    except ValueError as err:
        ks = sorted({g.K for g in core_groups(model)})
        return f"not applicable (K={','.join(map(str, ks))}): {err}"
    return None


# ---------------------------------------------------------------------------- jobs


def train_job(run_dir: Path, overrides: list[str]) -> None:
    run(compose(overrides), run_dir)


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
    held = []

    def probe() -> None:
        state = {t.untyped_storage().data_ptr() for s in base.state.values()
                 for t in s.values() if torch.is_tensor(t)}
        held.append(sum(n for p, n in live_storages(model).items() if p not in state) - before)

    def closure():
        probe()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure) if isinstance(optimizer, TwoPassOptimizer) else optimizer.step()
    probe()
    return max(held)


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def task_measure_job(run_dir: Path, spec: dict) -> None:
    """Interleaved step times (bench_optim.measure) and extra memory of every applicable
    optimizer on the seed-0 model of one experiment."""
    cfg = {m: compose_config(o) for m, o in spec["overrides"].items()}
    first = next(iter(cfg.values()))
    task = build_task(first["task"], first["model"])
    bench = Bench(spec["name"], spec["name"], lambda: task, spec["overrides"], {},
                  spec["warmup"], spec["blocks"], spec["steps"])
    load = os.getloadavg()
    timing = measure(bench)
    memory = {}
    for method, c in cfg.items():
        model = task.build_model()
        memory[method] = extra_memory(c["optimizer"], model,
                                      lambda m=model: task.loss(m, task.batch(0)))
    write_summary(run_dir, {"timing": timing, "extra_bytes": memory,
                            "parameter_bytes": parameter_bytes(task.build_model()),
                            "load_before": load, "load_after": os.getloadavg(),
                            "machine": machine_info(), "config": spec})


def cp_timing_job(run_dir: Path, spec: dict) -> None:
    """bench_optim's interleaved timing on ``spec['depth']`` CPLinear layers."""
    task = DeepCPRegression(spec["depth"], tuple(spec["in_shape"]), tuple(spec["out_shape"]),
                            spec["rank"])
    bench = Bench(spec["name"], spec["name"], lambda: task, spec["overrides"], spec["targets"],
                  spec["warmup"], spec["blocks"], spec["steps"])
    load = os.getloadavg()
    timing = measure(bench)
    model = task.build_model()
    write_summary(run_dir, {"timing": timing, "cores": sum(g.K for g in core_groups(model)),
                            "groups": len(core_groups(model)),
                            "parameter_bytes": parameter_bytes(model), "load_before": load,
                            "load_after": os.getloadavg(), "machine": machine_info(),
                            "config": spec})


class Matrices(nn.Module):
    """A stack of ``depth`` d x d linear layers with biases (float32)."""

    def __init__(self, d: int = 1024, depth: int = 4):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(d, d) for _ in range(depth)])
        self.x = torch.randn(16, d)

    def forward(self):
        return torch.tanh(self.layers(self.x)).square().mean()


def matrices_memory_job(run_dir: Path, spec: dict) -> None:
    """Extra memory of each two-pass method (own config over Adam) on :class:`Matrices`."""
    rows = {}
    for label, overrides in spec["overrides"].items():
        torch.manual_seed(0)
        model = Matrices(spec["d"], spec["depth"])
        opt_cfg = optimizer_of(overrides)
        rows[label] = {"extra_bytes": extra_memory(opt_cfg, model, model), "optimizer": opt_cfg}
    write_summary(run_dir, {"rows": rows, "parameter_bytes": parameter_bytes(Matrices(
        spec["d"], spec["depth"])), "config": spec})


# ---------------------------------------------------------------------------- the grid


def steps_of(args, experiment: Experiment) -> int:
    if args.quick:
        return QUICK_STEPS
    if args.full:
        return int(compose([f"experiment={experiment.name}"]).steps)
    return args.steps.get(experiment.name, experiment.reduced_steps)


def run_settings(experiment: Experiment, steps: int, seed: int) -> list[str]:
    log_every = min(experiment.log_every, steps)
    return [f"steps={steps}", f"seed={seed}", f"log_every={log_every}", "baselines=false",
            "logger=disabled",
            "threads=1", f"checkpoint_every={max(steps // 5, 1)}"]


def training_jobs(root: Path, plan: dict) -> list[Job]:
    jobs = []
    for experiment in EXPERIMENTS:
        entry = plan[experiment.name]
        for name, overrides in entry["methods"].items():
            if entry["not_applicable"].get(name):
                continue
            for seed in entry["seeds"]:
                full = [*overrides, *run_settings(experiment, entry["steps"], seed)]
                cost = entry["steps"] * (2.0 if name in ("sam", "asam", "nusam") else 1.0)
                jobs.append(Job(f"{entry['dir']}/{name}/seed{seed}",
                                root / entry["dir"] / name / f"seed{seed}", train_job, (full,),
                                resolved(compose(full)), cost))
    return jobs


def cp_spec(name: str, in_shape, out_shape, methods: dict[str, list[str]], quick: bool) -> dict:
    targets = {m: 1.05 for m in methods if m in ("das", "nbar", "obar")}
    return {"name": name, "depth": 60, "in_shape": list(in_shape), "out_shape": list(out_shape),
            "rank": 8, "overrides": methods, "targets": targets,
            "warmup": 5 if quick else 20, "blocks": 4 if quick else 30,
            "steps": 3 if quick else 20}


def measurement_jobs(root: Path, plan: dict, quick: bool) -> list[Job]:
    jobs = []
    for experiment in EXPERIMENTS:
        entry = plan[experiment.name]
        spec = {"name": experiment.name,
                "overrides": {m: [*o, "seed=0"] for m, o in entry["methods"].items()
                              if not entry["not_applicable"].get(m)},
                "warmup": 20 if quick else 200, "blocks": 4 if quick else 30,
                "steps": 10 if quick else 100}
        jobs.append(Job(f"measure/{experiment.name}", root / "measure" / experiment.name,
                        task_measure_job, (spec,), spec))
    sgd = ["optimizer/base=sgd"]
    k4 = {"base": ["optimizer=sgd"], **{m: [f"optimizer={m}", *sgd]
                                        for m in ("sam", "asam", "nusam", "das")}}
    k2 = {"base": ["optimizer=sgd"], **{m: [f"optimizer={m}", *sgd]
                                        for m in ("nbar", "obar", "das")}}
    for spec in (cp_spec("cp_k4", (4, 4), (4, 4), k4, quick),
                 cp_spec("cp_k2", (16,), (16,), k2, quick)):
        jobs.append(Job(f"measure/{spec['name']}", root / "measure" / spec["name"], cp_timing_job,
                        (spec,), spec))
    spec = {"d": 1024, "depth": 4, "overrides": {
        "SAM": ["optimizer=sam"], "ASAM": ["optimizer=asam"], "nuSAM": ["optimizer=nusam"],
        "nuSAM (restore=copy)": ["optimizer=nusam", "optimizer.restore=copy"]}}
    jobs.append(Job("measure/matrices", root / "measure" / "matrices", matrices_memory_job,
                    (spec,), spec))
    return jobs


def make_plan(args) -> dict:
    plan = {}
    for experiment in EXPERIMENTS:
        steps = steps_of(args, experiment)
        methods = {name: method_overrides(experiment, name) for name in ("base", *METHOD_CONFIGS)}
        plan[experiment.name] = {
            "steps": steps, "full_steps": int(compose([f"experiment={experiment.name}"]).steps),
            "seeds": list(args.seeds), "dir": f"{experiment.name}-steps{steps}",
            "methods": methods,
            "not_applicable": {m: not_applicable(o) for m, o in methods.items()}}
    return plan


# ---------------------------------------------------------------------------- the report


def ratio_cell(r: dict) -> str:
    lo, hi = r["paired_ratio_iqr"]
    return f"{r['ratio']:.3f}x (IQR {lo:.2f}-{hi:.2f})"


def verdict(r: dict) -> str:
    return "" if r.get("pass") is None else ("PASS" if r["pass"] else "FAIL")


def task_rows(experiment: Experiment, entry: dict, runs: dict, measured: dict, csv_rows: list):
    """Markdown rows of one experiment's table (and its CSV rows)."""
    metric = str(compose([f"experiment={experiment.name}"]).objective)
    rows = []
    base_runs = runs.get("base", {})
    base_label = LABELS[optimizer_of(entry["methods"]["base"])["base"]["name"]]
    for name, overrides in entry["methods"].items():
        label = f"{base_label} (base)" if name == "base" else LABELS[name]
        own = " ".join(o for o in overrides if o.startswith("optimizer.")) or "—"
        paper = experiment.paper.get(name)
        paper_cell = f"{paper:.4f}" if paper is not None else "—"
        if entry["not_applicable"].get(name):
            k = entry["not_applicable"][name].split(":")[0]
            rows.append([label, own, k, paper_cell, "—", "—", "—", "—", "—"])
            continue
        seeds = sorted(runs.get(name, {}))
        if not seeds:
            rows.append([label, own, "missing", paper_cell, "", "", "", "", ""])
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
                csv_rows.append(["task", f"{experiment.name}-steps{entry['steps']}", name, s,
                                 quantity, value])
        timing = measured["timing"].get(name)
        extra = measured["extra_bytes"].get(name)
        if timing is not None:
            csv_rows.append(["task", experiment.name, name, 0, "step_time_ratio_interleaved",
                             timing["ratio"]])
            csv_rows.append(["task", experiment.name, name, 0, "extra_bytes", extra])
        time_cell = "1 (reference)" if name == "base" else ratio_cell(timing)
        extra_cell = ("0 (reference)" if name == "base" else
                      f"{extra:,} ({extra / measured['parameter_bytes']:.2f}x params)")
        rows.append([label, own, f"{fmt_mean_std(*mean_std(values))}", paper_cell,
                     fmt_mean_std(*mean_std(q), digits=1),
                     "0 (reference)" if name == "base" else fmt_mean_std(*mean_std(red)),
                     time_cell, fmt_mean_std(*mean_std(train_ratio), digits=2), extra_cell])
    return metric, rows


def timing_table(measured: dict, csv_rows: list) -> str:
    rows = []
    for method, r in measured["timing"].items():
        ms = r["ms_per_step"]
        label = LABELS["sgd"] + " (base)" if method == "base" else LABELS[method]
        target = "" if r["target"] is None else f"<= {r['target']:.2f}x"
        rows.append([label, f"{ms['total']:.3f}", f"{ms['forward_backward']:.3f}",
                     f"{ms['optimizer_step']:.3f}", ratio_cell(r), f"{r['cpu_ratio']:.3f}x",
                     target, verdict(r)])
        csv_rows.append(["timing", measured["config"]["name"], method, 0, "ms_per_step",
                         ms["total"]])
        csv_rows.append(["timing", measured["config"]["name"], method, 0, "ratio", r["ratio"]])
    return markdown_table(["method", "ms/step", "fwd+bwd ms", "opt.step ms",
                           "ratio to base (paired IQR)", "CPU-time ratio", "target", "result"],
                          rows)


def grid_seconds(root: Path) -> float:
    return sum(r["seconds"] for r in read_jsonl(root / "timing.jsonl"))


def first_start(root: Path) -> str:
    records = read_jsonl(root / "timing.jsonl")
    return records[0]["started"] if records else "—"


def report(args, plan: dict, root: Path, summaries: dict, csv_rows: list) -> str:
    info = machine_info()
    reduced = any(plan[e.name]["steps"] < plan[e.name]["full_steps"] for e in EXPERIMENTS)
    steps = ", ".join(f"{e.name} {plan[e.name]['steps']:,} (protocol: "
                      f"{plan[e.name]['full_steps']:,})" for e in EXPERIMENTS)
    measured = {k[1]: v for k, v in summaries.items() if k[0] == "measure"}
    load = [measured[k]["load_before"] for k in measured if "load_before" in measured[k]]
    command = " ".join([".venv/bin/python", "scripts/compare_optimizers.py", *sys.argv[1:]])
    lines = [
        "# Optimizer comparison: base, SAM, ASAM, nuSAM, DAS, nBAR, oBAR",
        "",
        f"Command: `{command}`  ",
        f"Jobs started (UTC): {first_start(root)}; report written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}. Machine: {info['cpu']}, "
        f"{info['cpus']} CPU cores shared with other jobs, torch {info['torch']} (CPU), Python "
        f"{info['python']}; one torch thread per process, training runs on "
        f"{args.workers} worker processes, measurements on one. Job wall time summed over "
        f"invocations: {grid_seconds(root):.0f} s (`{root.relative_to(REPO)}/timing.jsonl`). "
        "1-minute load average at the start of each measurement job: "
        + ", ".join(f"{la[0]:.1f}" for la in load) + ".",
        "",
    ]
    if reduced:
        lines += [f"**REDUCED STEPS: {steps}. The task metrics below are NOT the protocol's "
                  "and not comparable to the paper's numbers, which are shown in their own "
                  "column, labelled, at the paper's 50,000 steps.**", ""]
    else:
        lines += [f"Steps: {steps}.", ""]
    lines += [
        "Seeds 0, 1, 2 (= Table 1 splits and model inits; for fig1 the model init, the "
        "noise draws are fixed by `task.data_seed`). Q reduction = 1 - Q_final / Q_final(base) "
        "on the same seed (positive: more balanced cores). Time vs base: median over "
        "interleaved blocks of the step time, one process, one thread, seed-0 model "
        "(`scripts/bench_optim.py`'s `measure`), with the interquartile range of the per-block "
        "ratios; the training-run column divides the runs' own seconds per step (runs in "
        "parallel on a shared machine: indicative only). Extra memory: peak net bytes the "
        "optimizer adds beyond the parameters, gradients and the base optimizer's state (see "
        "the script's docstring), and its multiple of the parameter bytes.",
        "",
        "Hyperparameters: SAM and DAS use the experiment's rho and alpha (the paper's values "
        "for Table 1). The experiments pin `optimizer.rho` / `optimizer.alpha` for every "
        "method, so ASAM, nuSAM, nBAR and oBAR get explicit overrides back to their own "
        "configs' values (column 'overrides'). Sources: "
        + "; ".join(f"{LABELS[m]}: {s}" for m, s in SOURCES.items()) + ".",
        "",
        "## (i) Task tables",
        "",
    ]
    for experiment in EXPERIMENTS:
        entry = plan[experiment.name]
        runs: dict[str, dict[int, dict]] = {}
        for key, summary in summaries.items():
            if key[0] == entry["dir"]:
                runs.setdefault(key[1], {})[int(key[2].removeprefix("seed"))] = summary
        metric, rows = task_rows(experiment, entry, runs, measured[experiment.name], csv_rows)
        step_note = (f"ours, {entry['steps']:,} steps, REDUCED"
                     if entry["steps"] < entry["full_steps"] else f"ours, {entry['steps']:,} "
                     "steps")
        paper_col = ("paper, 50,000 steps" if experiment.paper else "paper")
        lines += [f"### {experiment.title}", "",
                  markdown_table(["optimizer", "overrides", f"{metric} ({step_note})", paper_col,
                                  "Q final", "Q reduction vs base", "time/step vs base "
                                  "(interleaved)", "time/step vs base (training runs)",
                                  "extra memory, bytes"], rows)]
        na = {m: r for m, r in entry["not_applicable"].items() if r}
        if na:
            lines += [f"{', '.join(LABELS[m] for m in na)}: the optimizer refuses the model: "
                      + "; ".join(dict.fromkeys(r.split(": ", 1)[1] for r in na.values()))
                      + ".", ""]
    lines += ["The paper's Figure 1 gives curves, no numbers; its Table 1 does not say which "
              "protocol it used (see `experiments/table1/README.md`), so its numbers are shown "
              "beside both protocols.", ""]
    cp = {"cp_k4": "60 CPLinear((4,4),(4,4), rank 8) layers with ReLU: K = 4, 60 core groups "
                   "(240 cores)",
          "cp_k2": "60 CPLinear((16,),(16,), rank 8) layers with ReLU (each a rank-8 matrix "
                   "factorization): K = 2, 60 core groups (120 cores)"}
    lines += ["## (ii) Step time on many-core-groups models", "",
              "Batch 64, MSE to random targets, seed 0, every method over "
              "`optimizer/base=sgd` (lr 0.1, momentum 0.9, weight decay 5e-4) with its own "
              "config's hyperparameters. Interleaved blocks as in `scripts/bench_optim.py`; "
              "wall-clock ratios decide PASS/FAIL, the CPU-time ratio is a cross-check on the "
              "shared machine. Repeated measurements on this machine differ by several "
              "hundredths of the ratio, so a margin that small is not a robust verdict (see "
              "the README).", ""]
    for key, title in cp.items():
        m = measured[key]
        c = m["config"]
        lines += [f"### {title}", "",
                  f"Warm-up {c['warmup']} steps per method, {c['blocks']} blocks x "
                  f"{c['steps']} steps per method; load average {m['load_before'][0]:.1f} "
                  f"before, {m['load_after'][0]:.1f} after.", "", timing_table(m, csv_rows)]
    mem = measured["matrices"]
    rows, sam = [], mem["rows"]["SAM"]["extra_bytes"]
    for label, r in mem["rows"].items():
        b = r["extra_bytes"]
        rows.append([label, f"{b:,}", f"{b / mem['parameter_bytes']:.4f}",
                     f"{100 * b / sam:.2f}%"])
        csv_rows.append(["memory", "matrices", label, 0, "extra_bytes", b])
    nusam = mem["rows"]["nuSAM"]["extra_bytes"] / sam
    lines += ["## (iii) Extra memory on a model of large matrices", "",
              f"4 float32 `nn.Linear(1024, 1024)` layers with biases "
              f"({mem['parameter_bytes']:,} bytes of parameters), each method's own config "
              "over Adam. SAM holds a copy of the perturbed weights during the second pass "
              "(it frees e right after w <- w + e); nuSAM perturbs the weight matrices only "
              "and holds u_i (warm start), c_i u_i and v_i.", "",
              markdown_table(["optimizer", "extra memory (bytes)", "/ parameter bytes",
                              "/ SAM's"], rows),
              f"Target nuSAM < 1% of SAM's: {100 * nusam:.2f}% -> "
              f"**{'PASS' if nusam < 0.01 else 'FAIL'}**.", ""]
    targets = []
    for key in cp:
        for method, r in measured[key]["timing"].items():
            if r["target"] is not None:
                targets.append([f"{LABELS[method]} step time on {key} (K = "
                                f"{key[-1]})", f"<= {r['target']:.2f}x base",
                                f"{r['ratio']:.3f}x", f"**{verdict(r)}**"])
    targets.append(["nuSAM extra memory on 4 x Linear(1024, 1024)", "< 1% of SAM's",
                    f"{100 * nusam:.2f}%", f"**{'PASS' if nusam < 0.01 else 'FAIL'}**"])
    lines[lines.index("## (i) Task tables"):lines.index("## (i) Task tables")] = [
        "## Targets", "", markdown_table(["target", "bound", "measured", "result"], targets)]
    lines += ["Per-run summaries, raw block times and configs: "
              f"`{root.relative_to(REPO)}/` (git-ignored); every number above is also in "
              "`optimizers.csv` next to this file. Protocol, hyperparameter sources and "
              "discussion: `experiments/optimizers/README.md`.", ""]
    return "\n".join(lines)


def write_csv(path: Path, rows: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", "setting", "optimizer", "seed", "quantity", "value"])
    writer.writerows([*r[:5], f"{r[5]:.6g}" if isinstance(r[5], float) else r[5]]
                     for r in rows)
    atomic_write_text(path, buf.getvalue())


def parse_steps(items: list[str]) -> dict[str, int]:
    names = [e.name for e in EXPERIMENTS]
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value.isdigit() or int(value) <= 0:
            raise argparse.ArgumentTypeError(f"--steps {item!r}: expected NAME=N with NAME in "
                                             f"{names} and N > 0")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", default=[], metavar="NAME=N",
                        help="steps per experiment (default: "
                             + ", ".join(f"{e.name}={e.reduced_steps}" for e in EXPERIMENTS)
                             + ")")
    parser.add_argument("--full", action="store_true",
                        help="the experiments' own step counts (50,000 / 6000)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_STEPS} steps, short timings, into "
                             "runs/optimizers-quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    try:
        args.steps = parse_steps(args.steps)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    root = args.root or REPO / "runs" / ("optimizers-quick" if args.quick else "optimizers")
    torch.set_num_threads(1)
    plan = make_plan(args)
    failed = []
    for jobs, workers in ((training_jobs(root, plan), args.workers),
                          (measurement_jobs(root, plan, args.quick), 1)):
        timing = run_jobs(jobs, workers=workers, threads=1)
        append_jsonl(root / "timing.jsonl", {**timing, "argv": sys.argv[1:], **machine_info()})
        failed += timing["failed"]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    csv_rows: list = []
    text = report(args, plan, root, load_summaries(root), csv_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "optimizers.md", text)
    write_csv(args.out / "optimizers.csv", csv_rows)
    print(f"wrote {args.out / 'optimizers.md'} and {args.out / 'optimizers.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
