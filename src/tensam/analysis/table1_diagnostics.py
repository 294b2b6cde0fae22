"""Table 1's diagnostics (not training runs) -> ``<root>/diagnostics/*.json`` for make_table1.py.

* ``ceiling``: how much of the tensor a rank-(8,6,8) Tucker model can explain at all;
* ``hooi_study``: masked HOOI scored after 1, 10, 100, 1000 sweeps, three initialisations;
* ``lambda_<protocol>``: DAS's scale factors lambda_k over the first steps, checked against an
  independent float64 evaluation of Algorithm 2, with Adam's loss beside DAS's.

Each result is stored with its settings and recomputed only when they change; missing ones are
computed ``--jobs`` at a time (worker processes, one torch thread each). The training runs and
HOOI baselines themselves are Hydra multiruns (``make reproduce-table1``).

    python scripts/table1_diagnostics.py [--root runs/table1] [--quick] [--jobs 2]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from joblib import Parallel, delayed

from tensam.config import fingerprint, trajectory_settings
from tensam.optim import build_optimizer
from tensam.optim.schedules import scheduled
from tensam.reports.runs import build, cached, config
from tensam.tasks import build_task
from tensam.tasks.completion import r2_centred

#: protocol -> experiment config (configs/experiment/<name>.yaml)
PROTOCOLS = {"heldout": "table1", "paper": "table1_paper"}
SEEDS = (0, 1, 2)
FULL = {"study_sweeps": [1, 10, 100, 1000], "lambda_steps": 1000, "oracle_sweeps": 500}
QUICK = {"study_sweeps": [1, 10], "lambda_steps": 50, "oracle_sweeps": 20}


def _task(protocol: str, seed: int):
    """(the completion task of ``protocol`` on split ``seed``, the rank of the experiment's
    Tucker model: what the HOOI references fit)."""
    cfg = config([f"experiment={PROTOCOLS[protocol]}", f"seed={seed}"])
    return build_task(cfg["task"]), tuple(cfg["model"]["rank"])


def _tucker(tensor, rank, **kwargs):
    """tensorly's (masked) Tucker-HOOI on the numpy backend: (core, factors), sweeps, Xhat."""
    import tensorly as tl
    from tensorly.decomposition import tucker

    tl.set_backend("numpy")
    (core, factors), errors = tucker(tensor, rank=list(rank), return_errors=True, **kwargs)
    pred = torch.tensor(tl.tucker_to_tensor((core, factors)), dtype=torch.float32)
    return (core, factors), len(errors), pred


def ceiling(oracle_sweeps: int) -> dict:
    """``full``: HOOI on the complete tensor (SVD init, to convergence), R2 over all entries and
    over each split's held-out entries. ``oracle``: masked HOOI fitted to the *held-out* entries
    themselves, warm-started from ``full`` (EM only lowers the masked error): about the best
    held-out R2 any rank-(8,6,8) model can reach, let alone one fitted to the other entries."""
    first, rank = _task("heldout", SEEDS[0])
    full, sweeps, pred = _tucker(first.data, rank, init="svd", n_iter_max=1000, tol=1e-12)
    out = {"rank": list(rank), "full_sweeps": sweeps,
           "full_r2_all": r2_centred(pred, first.target, torch.ones_like(first.mask))}
    for protocol in PROTOCOLS:
        for seed in SEEDS:
            task, rank = _task(protocol, seed)
            held = (~task.mask_np).astype(float)
            warm = (full[0], list(full[1]))  # tensorly updates the factor list in place
            _, done, oracle = _tucker(task.data * held, rank, mask=held, init=warm,
                                      n_iter_max=oracle_sweeps, tol=0)
            out[f"{protocol}/seed{seed}"] = {
                "full_r2_heldout": task.scores(pred)["r2_heldout"],
                "oracle_r2_heldout": task.scores(oracle)["r2_heldout"], "oracle_sweeps": done}
    return out


def hooi_study(sweeps: list[int]) -> dict:
    """Masked HOOI on split 0 scored after ``sweeps`` sweeps, for three set-ups.

    ``random``: tensorly's random init, as the baseline; ``svd``: tensorly's default SVD init on
    the tensor with its held-out entries zeroed; ``svd_full_input``: SVD init on the complete
    tensor, as ``tucker(X, mask=M)`` does when handed X: its init (the SVD of each unfolding and
    the first core) reads the held-out values. Each stage continues the previous one
    (``init=(core, factors)``), which is exactly the next sweep of the same iteration.
    """
    out = {}
    for protocol in PROTOCOLS:
        task, rank = _task(protocol, SEEDS[0])
        observed = task.mask_np.astype(float)
        setups = {"random": (task.data * observed, "random"), "svd": (task.data * observed, "svd"),
                  "svd_full_input": (task.data, "svd")}
        for name, (tensor, init) in setups.items():
            done = 0
            for n in sweeps:
                init, _, pred = _tucker(tensor, rank, mask=observed, init=init,
                                        n_iter_max=n - done, tol=0, random_state=task.seed)
                done = n
                out[f"{protocol}/{name}/{n}"] = task.scores(pred)
    return out


def losses(overrides: list[str], steps: int, inspect=None) -> list[float]:
    """The training loss of the first ``steps`` steps of a composed config; ``inspect(model,
    optimizer)`` runs after each backward pass, before the update."""
    cfg = config(overrides)
    task, model = build(cfg)
    optimizer = build_optimizer(cfg["optimizer"], model, total_steps=cfg["steps"])

    def closure(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        loss.backward()
        if inspect is not None:
            inspect(model, optimizer)
        return loss

    return [optimizer.step(partial(closure, task.batch(s))).item() for s in range(steps)]


def lambda_check(protocol: str, steps: int) -> dict:
    """DAS's lambda_k (Algorithm 2, line 5) and loss over the first ``steps`` steps of split 0,
    Adam's loss on the same split and init, and the largest relative difference between the
    optimizer's lambda and :func:`algorithm2_lambda` (float64)."""
    lams, diffs = [], []

    def inspect(model, optimizer):  # lambda from the gradient at w, as the update computes it
        lam = optimizer.scale_factors().double()
        ref = algorithm2_lambda(model.cores(), optimizer)
        lams.append(lam.tolist())
        diffs.append(float((lam - ref).abs().max() / ref.abs().max()))

    base = [f"experiment={PROTOCOLS[protocol]}", f"seed={SEEDS[0]}"]
    das = losses([*base, "optimizer=das"], steps, inspect)
    return {"das": {"loss": das, "lam": lams, "max_rel_diff_vs_float64": max(diffs),
                    "cores": ["core"] + [f"U{i + 1}" for i in range(len(lams[0]) - 1)]},
            "adam": {"loss": losses([*base, "optimizer=none"], steps)}}


def algorithm2_lambda(cores, optimizer) -> torch.Tensor:
    """lambda_k = eta alpha^(t) u / ||G_k||^2 (||g_k||^2 - gbar), u = (K gbar)^(-1/2), float64,
    for one core group (Algorithm 2 with the schedule of ``optimizer``)."""
    sq_core = torch.stack([c.detach().double().square().sum() for c in cores])
    sq_grad = torch.stack([c.grad.double().square().sum() for c in cores])
    gbar = sq_grad.mean()
    alpha = scheduled(optimizer.alpha, optimizer.alpha_schedule, optimizer.steps,
                      optimizer.total_steps)
    eta = optimizer.param_groups[0]["lr"]
    return eta * alpha * (sq_grad - gbar) / ((len(cores) * gbar).sqrt() * sq_core)


def single_threaded(fn, *args) -> dict:
    """``fn(*args)`` on one torch thread, so the numbers do not depend on the machine's cores."""
    torch.set_num_threads(1)
    return fn(*args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs") / "table1")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK} instead of {FULL}")
    parser.add_argument("--jobs", type=int, default=2, help="diagnostics computed at once")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    # the experiments' settings (task, model, DAS over the base): a change recomputes everything
    configs = {e: fingerprint(trajectory_settings(config([f"experiment={e}", "optimizer=das"])))
               for e in PROTOCOLS.values()}
    jobs = {"ceiling": ({"oracle_sweeps": settings["oracle_sweeps"]}, ceiling,
                        (settings["oracle_sweeps"],)),
            "hooi_study": ({"sweeps": settings["study_sweeps"]}, hooi_study,
                           (settings["study_sweeps"],)),
            **{f"lambda_{p}": ({"steps": settings["lambda_steps"]}, lambda_check,
                               (p, settings["lambda_steps"])) for p in PROTOCOLS}}
    out = args.root / "diagnostics"
    Parallel(n_jobs=args.jobs)(
        delayed(cached)(out / f"{name}.json", {**extra, "configs": configs},
                        partial(single_threaded, fn, *fn_args))
        for name, (extra, fn, fn_args) in jobs.items())


if __name__ == "__main__":
    main()
