"""Table 1 (Tucker completion on the COVID-19 serology tensor): run every job of the grid.

For each protocol (``heldout``: ``experiment=table1``; ``paper``: ``experiment=table1_paper``)
and split (= seed 0, 1, 2) this runs, once each, into ``<root>/<protocol>/<method>/seed<k>/``:

* ``adam``, ``sam``, ``das``: :func:`tensam.train.run` on the composed Hydra config (the task's
  HOOI baseline is switched off there and run once per split instead);
* ``hooi``: the task's masked Tucker-HOOI baseline (:meth:`TuckerCompletion.baselines`);

plus the diagnostics quoted in ``experiments/table1/README.md`` (``<root>/diagnostics/``): the
best rank-(8,6,8) fits (``ceiling``), masked HOOI vs sweeps (``hooi_study``) and DAS's scale
factors lambda_k over the first steps (``lambda_<protocol>``).

Finished jobs (those with a ``summary.json``) are skipped, so an interrupted invocation resumes
where it stopped; training runs also checkpoint every ``steps/10`` steps. Each invocation appends
its wall time to ``<root>/timing.jsonl``. ``scripts/make_table1.py`` builds the table.

    python scripts/reproduce_table1.py                # the full protocol: 50,000 steps
    python scripts/reproduce_table1.py --quick        # smoke test into runs/table1-quick
    python scripts/reproduce_table1.py --steps 5000   # into runs/table1-steps5000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import (
    REPO,
    Job,
    append_jsonl,
    compose,
    machine_info,
    resolved,
    run_jobs,
    write_summary,
)

from tensam.optim import build_optimizer
from tensam.tasks import build_task
from tensam.tasks.completion import r2_centred
from tensam.train import run, seed_everything
from tensam.training import train_step

#: protocol -> experiment config (configs/experiment/<name>.yaml)
PROTOCOLS = {"heldout": "table1", "paper": "table1_paper"}
METHODS = ("adam", "sam", "das")
SEEDS = (0, 1, 2)
#: relative run time, to start the longest jobs first
COST = {"sam": 2.0, "das": 1.5, "adam": 1.0, "hooi": 1.0, "diagnostics": 0.5}
#: the public script's HOOI n_iter_max (configs/task/covid_*.yaml default to 100)
HOOI_ITER = 50000
#: sweeps after which the HOOI study scores masked HOOI
STUDY_SWEEPS = (1, 10, 100, 1000)
LAMBDA_STEPS = 1000
QUICK = {"steps": 200, "hooi_iter": 20, "study_sweeps": (1, 10), "lambda_steps": 50,
         "oracle_sweeps": 20}
ORACLE_SWEEPS = 500


def _task(overrides: list[str]):
    cfg = resolved(compose(overrides))
    return build_task(cfg["task"], cfg["model"]), cfg


def _tucker(tensor, rank, **kwargs):
    """tensorly's (masked) Tucker-HOOI on the numpy backend; (core, factors), sweeps."""
    import tensorly as tl
    from tensorly.decomposition import tucker

    tl.set_backend("numpy")
    (core, factors), errors = tucker(tensor, rank=list(rank), return_errors=True, **kwargs)
    pred = torch.tensor(tl.tucker_to_tensor((core, factors)), dtype=torch.float32)
    return (core, factors), len(errors), pred


def train_job(run_dir: Path, overrides: list[str]) -> None:
    run(compose(overrides), run_dir)


def hooi_job(run_dir: Path, overrides: list[str]) -> None:
    task, cfg = _task(overrides)
    started = time.perf_counter()
    scores = task.baselines()["hooi"]
    write_summary(run_dir, {**scores, "seconds": time.perf_counter() - started, "config": cfg})


def ceiling_job(run_dir: Path, overrides: dict[str, list[list[str]]], oracle_sweeps: int) -> None:
    """How much of the tensor a rank-(8,6,8) Tucker model can explain at all.

    ``full``: HOOI on the complete tensor (SVD init, to convergence), R2 over all entries and
    over each split's held-out entries. ``oracle``: masked HOOI fitted to the *held-out* entries
    themselves, warm-started from ``full`` (EM only lowers the masked error): about the best
    held-out R2 any rank-(8,6,8) model can reach, let alone one fitted to the other entries.
    """
    started = time.perf_counter()
    tasks = {p: [_task(o)[0] for o in runs] for p, runs in overrides.items()}
    first = next(iter(tasks.values()))[0]
    full, sweeps, pred = _tucker(first.data, first.rank, init="svd", n_iter_max=1000, tol=1e-12)
    summary = {"rank": list(first.rank), "full_sweeps": sweeps,
               "full_r2_all": r2_centred(pred, first.target, torch.ones_like(first.mask))}
    for protocol, split_tasks in tasks.items():
        for task in split_tasks:
            held = (~task.mask_np).astype(float)
            warm = (full[0], list(full[1]))  # tensorly updates the factor list in place
            _, oracle_sweeps_done, oracle = _tucker(task.data * held, task.rank, mask=held,
                                                    init=warm, n_iter_max=oracle_sweeps, tol=0)
            summary[f"{protocol}/seed{task.seed}"] = {
                "full_r2_heldout": task.scores(pred)["r2_heldout"],
                "oracle_r2_heldout": task.scores(oracle)["r2_heldout"],
                "oracle_sweeps": oracle_sweeps_done}
    summary["seconds"] = time.perf_counter() - started
    write_summary(run_dir, {**summary, "config": {"overrides": overrides,
                                                  "oracle_sweeps": oracle_sweeps}})


def hooi_study_job(run_dir: Path, overrides: dict[str, list[str]], sweeps: list[int]) -> None:
    """Masked HOOI scored after ``sweeps`` sweeps, for three set-ups on one split.

    ``random``: tensorly's random init, as the baseline; ``svd``: tensorly's default SVD init on
    the tensor with its held-out entries zeroed; ``svd_full_input``: SVD init on the complete
    tensor, as ``tucker(X, mask=M)`` does when handed X: its init (the SVD of each unfolding and
    the first core) reads the held-out values. Each stage continues the previous one
    (``init=(core, factors)``), which is exactly the next sweep of the same iteration.
    """
    started = time.perf_counter()
    summary = {}
    for protocol, task_overrides in overrides.items():
        task, _ = _task(task_overrides)
        observed = task.mask_np.astype(float)
        setups = {"random": (task.data * observed, "random"), "svd": (task.data * observed, "svd"),
                  "svd_full_input": (task.data, "svd")}
        for name, (tensor, init) in setups.items():
            done = 0
            for n in sweeps:
                init, _, pred = _tucker(tensor, task.rank, mask=observed, init=init,
                                        n_iter_max=n - done, tol=0, random_state=task.seed)
                done = n
                summary[f"{protocol}/{name}/{n}"] = task.scores(pred)
    summary["seconds"] = time.perf_counter() - started
    write_summary(run_dir, {**summary, "config": {"overrides": overrides, "sweeps": sweeps}})


def lambda_job(run_dir: Path, das: list[str], adam: list[str], steps: int) -> None:
    """DAS's lambda_k (Algorithm 2, line 5) and loss over the first ``steps`` steps, the loss of
    Adam on the same split and init, and an independent float64 evaluation of Algorithm 2's
    lambda from the cores and gradients to check the optimizer's implementation."""
    record = {}
    for name, overrides in (("das", das), ("adam", adam)):
        cfg = compose(overrides)
        container = resolved(cfg)
        seed_everything(int(cfg.seed))
        task = build_task(container["task"], container["model"])
        model = task.build_model()
        optimizer = build_optimizer(container["optimizer"], model, total_steps=int(cfg.steps))
        losses, lams, check = [], [], 0.0
        for step in range(steps):
            loss, _ = train_step(task, model, optimizer, task.batch(step))
            losses.append(loss.item())
            if name == "das":
                lam = optimizer.scale_factors().double()
                ref = _algorithm2_lambda(model.cores(), optimizer)
                check = max(check, float((lam - ref).abs().max() / ref.abs().max()))
                lams.append(lam.tolist())
            optimizer.step()
        record[name] = {"loss": losses}
        if name == "das":
            record[name].update(lam=lams, max_rel_diff_vs_float64=check,
                                cores=["core"] + [f"U{i + 1}" for i in range(len(lams[0]) - 1)])
    write_summary(run_dir, {**record, "config": {"das": das, "adam": adam, "steps": steps}})


def _algorithm2_lambda(cores, optimizer) -> torch.Tensor:
    """lambda_k = eta alpha^(t) u / ||G_k||^2 (||g_k||^2 - gbar), u = (K gbar)^(-1/2), float64,
    for one core group (Algorithm 2 with the schedule of ``optimizer``)."""
    from tensam.optim.schedules import scheduled

    sq_core = torch.stack([c.detach().double().square().sum() for c in cores])
    sq_grad = torch.stack([c.grad.double().square().sum() for c in cores])
    gbar = sq_grad.mean()
    alpha = scheduled(optimizer.alpha, optimizer.alpha_schedule, optimizer.steps,
                      optimizer.total_steps)
    eta = optimizer.param_groups[0]["lr"]
    return eta * alpha * (sq_grad - gbar) / ((len(cores) * gbar).sqrt() * sq_core)


def build_jobs(root: Path, steps: int | None, seeds, hooi_iter: int, study_sweeps,
               lambda_steps: int, oracle_sweeps: int) -> list[Job]:
    jobs = []
    diag = root / "diagnostics"
    extra = [f"steps={steps}"] if steps else []
    for protocol, experiment in PROTOCOLS.items():
        base = [f"experiment={experiment}", *extra]
        total = int(compose(base).steps)
        for seed in seeds:
            for method in METHODS:
                overrides = [*base, f"optimizer={method}", f"seed={seed}", "baselines=false",
                             f"checkpoint_every={max(total // 10, 1)}"]
                jobs.append(Job(f"{protocol}/{method}/seed{seed}",
                                root / protocol / method / f"seed{seed}", train_job,
                                (overrides,), resolved(compose(overrides)), COST[method]))
            overrides = [*base, f"seed={seed}", f"task.hooi_iter={hooi_iter}"]
            jobs.append(Job(f"{protocol}/hooi/seed{seed}", root / protocol / "hooi" / f"seed{seed}",
                            hooi_job, (overrides,), resolved(compose(overrides)), COST["hooi"]))
        das, adam = ([*base, f"optimizer={m}", f"seed={seeds[0]}"] for m in ("das", "adam"))
        config = {"das": das, "adam": adam, "steps": lambda_steps}
        jobs.append(Job(f"diagnostics/lambda_{protocol}", diag / f"lambda_{protocol}", lambda_job,
                        (das, adam, lambda_steps), config, COST["diagnostics"]))
    split0 = {p: [f"experiment={e}", f"seed={seeds[0]}"] for p, e in PROTOCOLS.items()}
    by_split = {p: [[f"experiment={e}", f"seed={s}"] for s in seeds] for p, e in PROTOCOLS.items()}
    jobs.append(Job("diagnostics/hooi_study", diag / "hooi_study", hooi_study_job,
                    (split0, list(study_sweeps)), {"overrides": split0,
                                                   "sweeps": list(study_sweeps)},
                    COST["diagnostics"]))
    jobs.append(Job("diagnostics/ceiling", diag / "ceiling", ceiling_job, (by_split, oracle_sweeps),
                    {"overrides": by_split, "oracle_sweeps": oracle_sweeps}, COST["diagnostics"]))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the experiment's 50,000)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['steps']} steps, {QUICK['hooi_iter']} HOOI "
                             "sweeps, into runs/table1-quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per worker")
    parser.add_argument("--root", type=Path, default=None,
                        help="run directory (default: runs/table1[-quick|-steps<N>])")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        parser.error(f"--steps must be > 0, got {args.steps}")
    settings = (QUICK if args.quick else
                {"steps": args.steps, "hooi_iter": HOOI_ITER, "study_sweeps": STUDY_SWEEPS,
                 "lambda_steps": LAMBDA_STEPS, "oracle_sweeps": ORACLE_SWEEPS})
    if args.quick and args.steps is not None:
        settings = {**settings, "steps": args.steps}
    suffix = "-quick" if args.quick else (f"-steps{args.steps}" if args.steps else "")
    root = args.root or REPO / "runs" / f"table1{suffix}"
    jobs = build_jobs(root, settings["steps"], args.seeds, settings["hooi_iter"],
                      settings["study_sweeps"], settings["lambda_steps"],
                      settings["oracle_sweeps"])
    timing = run_jobs(jobs, workers=args.workers, threads=args.threads)
    append_jsonl(root / "timing.jsonl", {**timing, "argv": sys.argv[1:], **machine_info()})
    print(f"wall time {timing['seconds']:.0f} s for {timing['ran']} job(s) in {root}")
    if timing["failed"]:
        print(f"failed: {timing['failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
