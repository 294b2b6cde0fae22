"""Can Table 1 train in the 3-minute budget? The cost of its runs stacked into one batched model
(results/bench_table1_batch.md).

    .venv/bin/python scripts/bench_table1_batch.py

``make reproduce-table1`` trains 18 runs of 50,000 full-batch steps of a tiny Tucker model
(438 x 6 x 11, rank (8, 6, 8)), one process per run, where an AdamW step costs 0.7-0.9 ms on this
CPU, mostly in dispatching small ops. After HOOI (about 120 CPU-s) and the diagnostics (about
20 s), a 3-minute make on 2 cores leaves about 200 CPU-s for the 1.2 million forward-backward
passes of the 18 runs (SAM's two per step): about 0.17 ms per pass. Batching is the one way to
share the dispatches: stack the 6 runs of a method (3 splits x 2 protocols) along a leading
dimension and train them as one model.

This benchmark times, interleaved in one process on one thread (``tensam.bench.common``):

* ``single``: one run's AdamW step as ``train.py`` takes it (``tensam.training.train_step``);
* ``batched``: one step of the 6 runs stacked: :func:`batched_tucker_to_tensor` (the same mode
  products, in the same order, as batched matmuls), the sum of the runs' losses, one backward and
  one AdamW step on the stacked parameters (Adam is elementwise, so stacking changes no formula);

and reports the time per run-step of each, the ratio, and whether the batched path reproduces the
single runs bit for bit (forward, gradients, and the parameters after ``--check-steps`` steps).

It also measures the *floor* of any faster single run that keeps every bit: the ATen calls of one
step of each method (Adam, SAM, DAS), recorded below autograd
(:class:`tensam.bench.common.AtenRecorder`) and replayed in a bare loop
(:func:`tensam.bench.common.replay`), with no Python model, closure or autograd graph around them.
The same kernels on the same shapes and layouts are what a bit-identical run must execute, so
``replay`` bounds from below what fusing dispatches, scripting or a C++ driver could reach; the
cost of calling that many trivial ops (``aten.alias``) estimates how much of it is dispatch.
``profiler::`` annotations (torch.optim's ``record_function``) are left out of the replay.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from tensam.bench.common import (
    bench_machine,
    bench_parser,
    interleaved_times,
    record_step,
    replay,
    write_bench,
)
from tensam.build import build
from tensam.reports.runs import build as build_run
from tensam.reports.runs import config
from tensam.tensorized.tucker import mode_order
from tensam.training import train_step

#: the 6 runs of one method in Table 1: both protocols x 3 splits (= seeds)
RUNS = [(experiment, seed) for experiment in ("table1", "table1_paper") for seed in (0, 1, 2)]
#: the methods of Table 1 (optimizer config) and their forward-backward passes per step
METHODS = {"adamw": 1, "sam": 2, "das": 1}
#: the steps of every Table 1 run (``steps`` of experiment=table1 and table1_paper)
STEPS = 50_000
#: CPU-s a 3-minute make leaves for training on 2 cores (see the module docstring)
BUDGET_TRAINING_CPU_S = 200.0
#: the same budget per forward-backward pass: 6 runs x 50,000 steps x the passes of each method
BUDGET_MS_PER_PASS = round(BUDGET_TRAINING_CPU_S * 1e3 / (len(RUNS) * STEPS
                                                           * sum(METHODS.values())), 2)


def batched_mode_product(t: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """``tensam.tensorized.tucker.mode_product`` of every run at once: ``t`` (B, ...) and
    ``matrix`` (B, n, r) contract ``t``'s axis ``mode + 1`` with the columns of ``matrix``."""
    moved = torch.movedim(t, mode + 1, -1)
    out = torch.bmm(moved.reshape(t.shape[0], -1, moved.shape[-1]), matrix.transpose(1, 2))
    return torch.movedim(out.reshape(*moved.shape[:-1], matrix.shape[1]), -1, mode + 1)


def batched_tucker_to_tensor(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tucker_to_tensor`` of B stacked Tucker models: core (B, r_1, ..., r_d), factors
    (B, n_i, r_i); the mode products in the same order of increasing growth n_i / r_i."""
    out = core
    for mode in mode_order([f.shape[1:] for f in factors]):
        out = batched_mode_product(out, factors[mode], mode)
    return out


class Batched:
    """The runs of ``RUNS`` as one stacked model with one base optimizer, built from the runs'
    own ``optimizer.base`` node (AdamW for Table 1)."""

    def __init__(self, singles: list):
        tasks, models = zip(*[(task, model) for task, model, _ in singles], strict=True)
        self.cores = [torch.nn.Parameter(torch.stack([m.cores()[k].detach() for m in models]))
                      for k in range(len(models[0].cores()))]
        self.target = tasks[0].target
        self.weight = torch.stack([t.weight for t in tasks])
        self.optimizer = build(singles[0][2]["optimizer"]["base"], "optimizer.base",
                               params=self.cores)

    def forward(self) -> torch.Tensor:
        return batched_tucker_to_tensor(self.cores[0], self.cores[1:])

    def loss(self) -> torch.Tensor:
        """The sum of the runs' losses: each run's gradient is its own loss's."""
        return ((self.forward() - self.target).square() * self.weight).sum()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()


def singles(optimizer: str = "adamw", runs: Sequence[tuple[str, int]] = tuple(RUNS)) -> list:
    """(task, model, config) of each of ``runs`` (experiment, seed), built as ``train.py`` builds
    them."""
    out = []
    for experiment, seed in runs:
        cfg = config([f"experiment={experiment}", f"optimizer={optimizer}", f"seed={seed}"])
        out.append((*build_run(cfg), cfg))
    return out


#: ATen ops whose rounding depends on the kernel (matmuls, reductions): a batched engine that
#: keeps every bit must call them once per run; elementwise ops give the same bits batched
ORDER_SENSITIVE = ("aten.mm.", "aten.bmm.", "aten.sum.", "aten._foreach_norm.",
                   "aten.linalg_vector_norm.", "aten.index_add_.")


def floor_times(blocks: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per method of :data:`METHODS` (Table 1's ``heldout`` run of split 0): ms per step of the
    step itself, of the replay of its ATen calls, of its :data:`ORDER_SENSITIVE` calls alone,
    and of as many trivial calls as each replay; the call counts."""
    from tensam.optim import build_optimizer

    out = {}
    for method in METHODS:
        (task, model, cfg), = singles(method, RUNS[:1])
        opt = build_optimizer(cfg["optimizer"], model)

        def step(task=task, model=model, opt=opt):
            train_step(task, model, opt, None)

        for _ in range(warmup):
            step()
        calls = record_step(step)
        ordered = [c for c in calls if str(c[0]).startswith(ORDER_SENSITIVE)]
        trivial = [(torch.ops.aten.alias.default, (torch.zeros(1),), {})] * len(calls)
        trivial_ordered = trivial[: len(ordered)]
        runs = {"step": step, "replay": lambda calls=calls: replay(calls),
                "dispatch": lambda trivial=trivial: replay(trivial),
                "ordered": lambda ordered=ordered: replay(ordered),
                "ordered_dispatch": lambda trivial=trivial_ordered: replay(trivial)}
        for run in runs.values():
            for _ in range(warmup):
                run()
        times = interleaved_times(runs, blocks, steps)
        out[method] = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        out[method].update(calls=len(calls), ordered_calls=len(ordered))
    return out


def training_cpu_s(ms_per_step: dict[str, float]) -> float:
    """CPU-s of Table 1's gradient runs (``RUNS`` per method, ``STEPS`` steps each) at these
    costs per step."""
    return sum(ms * len(RUNS) * STEPS / 1e3 for ms in ms_per_step.values())


def bitwise(steps: int) -> dict[str, bool | float]:
    """Does the batched path give each run's forward, first gradients and parameters after
    ``steps`` AdamW steps exactly? Also the largest gradient difference relative to the
    gradient's largest entry (rounding, or a wrong formula)."""
    from tensam.optim import build_optimizer

    runs = singles()
    batched = Batched(runs)
    result = {"forward": all(torch.equal(b, model()) for b, (_, model, _) in
                             zip(batched.forward().detach(), runs, strict=True))}
    batched.loss().backward()
    grads = []
    for task, model, _ in runs:
        task.loss(model).backward()
        grads.append([c.grad for c in model.cores()])
    pairs = [(batched.cores[k].grad[i], g[k]) for i, g in enumerate(grads) for k in range(len(g))]
    result["gradients"] = all(torch.equal(a, b) for a, b in pairs)
    result["largest relative gradient difference"] = max(
        float((a - b).abs().max() / b.abs().max()) for a, b in pairs)
    optimizers = [build_optimizer(cfg["optimizer"], model) for _, model, cfg in runs]
    batched = Batched(singles())
    for _ in range(steps):
        batched.step()
        for (task, model, _), opt in zip(runs, optimizers, strict=True):
            train_step(task, model, opt, None)
    result[f"parameters after {steps} steps"] = all(
        torch.equal(batched.cores[k][i], c) for i, (_, model, _) in enumerate(runs)
        for k, c in enumerate(model.cores()))
    return result


def floor_lines(floor: dict[str, dict[str, float]], args) -> list[str]:
    """The floor section of the report (see the module docstring)."""
    cost = {k: {m: f[k] for m, f in floor.items()} for k in ("step", "replay")}
    cost["kernels"] = {m: f["replay"] - f["dispatch"] for m, f in floor.items()}
    cost["ordered"] = {m: f["ordered"] - f["ordered_dispatch"] for m, f in floor.items()}
    rows = [f"| {m} | {METHODS[m]} | {f['calls']} | {f['step']:.3f} | {f['replay']:.3f} | "
            f"{f['dispatch']:.3f} | {f['replay'] - f['dispatch']:.3f} | {f['ordered_calls']} | "
            f"{f['ordered'] - f['ordered_dispatch']:.3f} |" for m, f in floor.items()]
    cpu = {k: training_cpu_s(v) for k, v in cost.items()}
    return [
        "## The floor of a bit-identical run",
        "",
        f"One step of each method on Table 1's `heldout` run of split 0 (`experiment=table1`, "
        "seed 0), as `train.py` takes it (`step`); the ATen calls of that step, recorded below "
        "autograd and replayed in a bare loop (`replay`: the same kernels on the same shapes and "
        "layouts, none of the Python, closure or autograd around them; torch.optim's profiler "
        "annotations left out); and as many calls of a trivial op (`dispatch`: the cost of "
        "calling, so `replay - dispatch` estimates the kernels). `ordered`: the same for the "
        "calls whose rounding depends on the kernel (matmuls, sums, norms: "
        "`tensam.bench.table1_batch.ORDER_SENSITIVE`), the ones a batched engine that keeps every "
        "bit would still have to make once per run; the rest is elementwise work, which gives "
        "the same bits batched. Interleaved: "
        f"{args.warmup} warm-up steps, then {args.blocks} blocks x {args.steps} steps; medians.",
        "",
        "| method | passes per step | ATen calls per step | step (ms) | replay (ms) | "
        "dispatch (ms) | kernels, replay - dispatch (ms) | ordered calls | their kernels (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Table 1's {len(RUNS) * len(METHODS)} gradient runs ({len(RUNS)} per method, "
        f"{STEPS:,} steps each) at these costs: "
        f"{cpu['step']:.0f} CPU-s as steps, {cpu['replay']:.0f} CPU-s as replays, "
        f"{cpu['kernels']:.0f} CPU-s of kernels alone, against the {BUDGET_TRAINING_CPU_S:.0f} "
        "CPU-s a 3-minute make leaves for training on 2 cores. "
        + ("Even the kernels alone exceed it: no faster driver of the same kernels (fused "
           "dispatches, scripting, C++) fits a bit-identical Table 1 in 3 minutes."
           if cpu["kernels"] > BUDGET_TRAINING_CPU_S else
           "The kernels alone fit it: what is over the budget is the calling around them."),
        f"The order-sensitive kernels alone cost {cpu['ordered']:.0f} CPU-s: "
        + ("more than the budget, so no bit-identical route exists at all on this machine."
           if cpu["ordered"] > BUDGET_TRAINING_CPU_S else
           "within the budget, so a bit-identical route is not excluded: a second training "
           "engine that batches the runs' elementwise work and calls these kernels once per run "
           "(not built; it would have to reproduce every output of `train.py` bit for bit)."),
        "",
        *das_lines(floor),
    ]


def das_lines(floor: dict[str, dict[str, float]], target: float = 1.10) -> list[str]:
    """DAS's own ATen calls (DAS's step minus AdamW's) against the ``target`` ratio."""
    das, base = floor["das"], floor["adamw"]
    kernels = (das["replay"] - das["dispatch"]) - (base["replay"] - base["dispatch"])
    ratio = (base["step"] + kernels) / base["step"]
    return [
        f"DAS's own calls (DAS minus AdamW): {das['calls'] - base['calls']} ATen calls, "
        f"{das['replay'] - base['replay']:.3f} ms replayed, {kernels:.3f} ms of kernels. "
        f"Added to AdamW's whole step ({base['step']:.3f} ms) with no dispatch cost at all, "
        f"they give {ratio:.2f}x AdamW, against the {target:.2f}x target of `bench_optim`: "
        + ("no bit-identical driver of DAS's per-core kernels reaches it."
           if ratio > target else "the target is within reach of a leaner driver."),
        "",
    ]


def main() -> None:
    parser = bench_parser(__doc__, steps=200, threads=1)
    parser.add_argument("--check-steps", type=int, default=100)
    parser.set_defaults(warmup=100, blocks=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    from tensam.optim import build_optimizer

    (task, model, cfg), = singles(runs=RUNS[:1])
    opt = build_optimizer(cfg["optimizer"], model)
    batched = Batched(singles())
    steps = {"single": lambda: train_step(task, model, opt, None), "batched": batched.step}
    for run in steps.values():
        for _ in range(args.warmup):
            run()
    times = interleaved_times(steps, args.blocks, args.steps)
    median = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    per_run = {"single": median["single"], "batched": median["batched"] / len(RUNS)}
    exact = bitwise(args.check_steps)
    floor = floor_times(args.blocks, args.steps, args.warmup)
    machine = bench_machine("bench_table1_batch.py", args.threads, load_before, args.device)
    lines = [
        "# Table 1's runs stacked into one batched model: time per run-step",
        "",
        f"Command: `{machine['command']}`  ",
        f"Date (UTC): {machine['date']}; machine: {machine['cpu']}, torch {machine['torch']}, "
        f"{args.threads} thread; load average before / after: {machine['load']}.",
        "",
        f"One AdamW step of Table 1's model (`experiment=table1`, seed 0) alone (`single`, "
        f"`tensam.training.train_step`) and of its {len(RUNS)} runs of one method stacked "
        f"(`batched`, `tensam.bench.table1_batch.Batched`), interleaved: {args.warmup} warm-up "
        f"steps, then {args.blocks} blocks x {args.steps} steps each; median over blocks. "
        f"Budget: {BUDGET_MS_PER_PASS} ms per forward-backward pass leaves a 3-minute "
        "`make reproduce-table1` (see the module docstring).",
        "",
        "| path | ms per step | runs per step | ms per run-step | budget per pass |",
        "|---|---:|---:|---:|---:|",
        f"| single | {median['single']:.3f} | 1 | {per_run['single']:.3f} | "
        f"{BUDGET_MS_PER_PASS} |",
        f"| batched | {median['batched']:.3f} | {len(RUNS)} | {per_run['batched']:.3f} | "
        f"{BUDGET_MS_PER_PASS} |",
        "",
        f"Batched / single per run-step: {per_run['batched'] / per_run['single']:.3f}x.",
        "",
        "Bit for bit against the single runs (all 6 runs, `torch.equal`): "
        + "; ".join(f"{k}: {v:.2e}" if isinstance(v, float) else
                    f"{k}: {'equal' if v else 'different'}" for k, v in exact.items()) + ".",
        "",
        *floor_lines(floor, args),
    ]
    write_bench("bench_table1_batch", args.out, args.device, "\n".join(lines),
                {"machine": machine, "times_s": times, "median_ms": median,
                 "per_run_ms": per_run, "bitwise": exact, "runs": RUNS, "floor_ms": floor})
if __name__ == "__main__":
    main()
