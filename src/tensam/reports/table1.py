"""Table 1: aggregate the runs of ``make reproduce-table1`` into ``results/table1.{md,csv}``.

The runs are Hydra multiruns (see the Makefile) in ``<root>/<protocol>/<optimizer>/seed<k>/``:
``none`` (the experiment's base optimizer alone, the paper's ADAM), ``sam``, ``das``, and ``hooi``
(a run of 0 steps whose summary's ``baselines`` hold the masked Tucker-HOOI scores). For each
protocol, rows HOOI / ADAM / SAM / DAS with our mean ± std over the splits of ``r2_heldout`` and
``r2_observed`` beside the paper's Table 7, the run settings read back from the stored configs,
the run times, and the diagnostics of ``scripts/table1_diagnostics.py`` (``<root>/diagnostics``).
Runs are read through :mod:`tensam.reports`: only finished runs are averaged and diverged ones
are counted apart ("2 (+1 diverged)"); runs of one cell must share their stored settings but for
the seed, and the gradient runs of a protocol all but their method's options (else the builder
stops, naming the runs and keys); a torn last line of a ``metrics.jsonl`` is dropped with a line.

    python scripts/make_table1.py [--root runs/table1] [--out results]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from tensam.reports import DIVERGED, FINISHED, Cell, require_same_settings
from tensam.reports.format import fmt_mean_std, machine_info, markdown_table, mean_std, render
from tensam.reports.runs import final_state, load_summaries, read_jsonl
from tensam.reports.stages import latest, process_seconds
from tensam.tensorized.tucker import tucker_to_tensor

#: the paper's Table 7 (R2, mean ± std over 3 splits)
PAPER = {"hooi": (0.9268, 0.0063), "adam": (0.9482, 0.0012), "sam": (0.9485, 0.0013),
         "das": (0.9484, 0.0017)}
METHODS = {"hooi": "HOOI", "adam": "ADAM", "sam": "SAM", "das": "DAS"}
#: method -> run directory (the Makefile's grids; ``none``: the base optimizer alone)
DIRS = {"hooi": "hooi", "adam": "none", "sam": "sam", "das": "das"}
GRADIENT = ("adam", "sam", "das")
METRICS = ("r2_heldout", "r2_observed")
PROTOCOLS = {
    "heldout": "the paper's text (Sec. 5.1, App. B): exactly 70% of the entries held out, mean "
               "squared error on the observed 30%, R2 = 1 - SSE/SST",
    "paper": "the public script that appears to be the authors': each entry observed with "
             "probability 0.3, sum of squared errors, R2 = 1 - ||M*(Xhat-X)||^2 / ||M*X||^2 "
             "on the observed mask M",
}
#: ours "agrees" with the paper when |mean - paper mean| <= max(AGREE * paper std, ABS_TOL)
AGREE, ABS_TOL = 2.0, 0.005


def settings(sam: dict, das: dict) -> str:
    """One line of the settings that define a protocol, read from the stored configs of its
    SAM and DAS runs."""
    base, task, model = das["optimizer"]["base"], das["task"], das["model"]
    return (f"mask `{task['protocol']}` (observed {task['observed']}), loss `{task['loss']}`, "
            f"rank {tuple(model['rank'])}, init `{model['init']}`, base `{base['_target_']}` "
            f"(lr {base['lr']}, betas {tuple(base['betas'])}, weight decay "
            f"{base['weight_decay']}), {das['steps']} steps, SAM rho {sam['optimizer']['rho']}, "
            f"DAS alpha {das['optimizer']['alpha']} ({das['optimizer']['alpha_schedule']})")


def scores(key: tuple, summary: dict) -> dict:
    """The metrics of a run: a HOOI run's are its summary's baseline scores."""
    return (summary.get("baselines") or {}).get("hooi") or {} if key[1] == "hooi" else summary


def name_of(key: tuple) -> str:
    """A run's directory under the root, for messages: ``<protocol>/<dir>/<seed>``."""
    return f"{key[0]}/{DIRS[key[1]]}/{key[2]}"


def check_settings(runs: dict) -> None:
    """Refuse (:class:`tensam.reports.MixedSettingsError`) runs of different stored settings in
    one cell (a protocol x method: only the seed may differ), and gradient runs of one protocol
    that differ in more than their method's own options (the protocol's settings line names one
    setting: steps, rank, base optimizer, ...)."""
    for protocol in PROTOCOLS:
        for method in METHODS:
            require_same_settings({name_of(k): s for k, s in runs.items()
                                   if k[:2] == (protocol, method)},
                                  f"the `{protocol}` {METHODS[method]} cell")
        require_same_settings(
            {name_of(k): s for k, s in runs.items() if k[0] == protocol and k[1] in GRADIENT},
            f"the `{protocol}` protocol's settings line",
            vary=lambda key: key.startswith("optimizer.") and not key.startswith("optimizer.base."))


def aggregate(runs: dict) -> list[dict]:
    """One row per protocol x method x metric: mean, std and n over the finished runs, the
    count of diverged runs apart (never averaged; mean None when none finished), the paper's
    number."""
    rows = []
    for protocol in PROTOCOLS:
        for method in METHODS:
            found = {k: s for k, s in runs.items() if k[:2] == (protocol, method)}
            if not found:
                continue
            cell = Cell.of(found)
            own = next(iter(found.values()))["config"]["objective"]
            for metric in METRICS:
                values = cell.values(lambda k, s, metric=metric: scores(k, s).get(metric))
                mean, std = mean_std(values) if values else (None, None)
                paper_mean, paper_std = PAPER[method]
                diff = None if mean is None else mean - paper_mean
                rows.append({"protocol": protocol, "method": method, "metric": metric,
                             "own_metric": metric == own, "n": len(cell.finished),
                             "diverged": len(cell.diverged), "count": cell.count(),
                             "mean": mean, "std": std, "paper_mean": paper_mean,
                             "paper_std": paper_std, "diff": diff,
                             "agrees": diff is not None
                             and abs(diff) <= max(AGREE * paper_std, ABS_TOL),
                             "seeds": " ".join(sorted(k[2] for k in cell.finished)),
                             "diverged_seeds": " ".join(sorted(k[2] for k in cell.diverged))})
    return rows


def verdict(rows: list[dict]) -> list[str]:
    """Which protocol/metric reproduces the paper's column for the gradient methods."""
    lines = []
    for protocol in PROTOCOLS:
        for metric in METRICS:
            cells = [r for r in rows if (r["protocol"], r["metric"]) == (protocol, metric)
                     and r["method"] in GRADIENT]
            if not cells:
                continue
            diffs = [abs(r["diff"]) for r in cells if r["diff"] is not None]
            worst = f"{max(diffs):.4f}" if diffs else "-"
            agree = sum(r["agrees"] for r in cells)
            hooi = [r for r in rows if (r["protocol"], r["method"], r["metric"])
                    == (protocol, "hooi", metric) and r["diff"] is not None]
            hooi_text = f"; HOOI off by {hooi[0]['diff']:+.4f}" if hooi else ""
            failed = [METHODS[r["method"]] for r in cells if r["diff"] is None]
            failed_text = (f"; no finished run of {', '.join(failed)} (all diverged)"
                           if failed else "")
            lines.append(f"- `{protocol}` / `{metric}`: {agree}/{len(cells)} gradient methods "
                         f"agree with the paper (largest |ours - paper| = {worst}{hooi_text}"
                         f"{failed_text})"
                         + (" **<- reproduces the paper's column**" if agree == len(cells)
                            else ""))
    return lines


def main_table(rows: list[dict]) -> str:
    out = []
    for protocol, text in PROTOCOLS.items():
        own = next((r["metric"] for r in rows if r["protocol"] == protocol and r["own_metric"]),
                   None)
        if own is None:
            continue
        out.append(f"### Protocol `{protocol}`: {text}\n\nOwn metric: `{own}` (marked *).\n")
        header = ["Method", *[f"ours `{m}`{' *' if m == own else ''}" for m in METRICS],
                  "paper R2 (Table 7)", "n"]
        body = []
        for method, name in METHODS.items():
            cells = {r["metric"]: r for r in rows if (r["protocol"], r["method"]) == (protocol,
                                                                                      method)}
            if not cells:
                continue
            body.append([name, *[("- (no finished run)" if cells[m]["mean"] is None else
                                  fmt_mean_std(cells[m]["mean"], cells[m]["std"])) +
                                 (" ✓" if cells[m]["agrees"] else "") for m in METRICS],
                         fmt_mean_std(*PAPER[method]), cells[METRICS[0]]["count"]])
        out.append(markdown_table(header, body))
    return "\n".join(out)


def final_model(run_dir: Path):
    """The cores of a finished run at its final step (:func:`final_state`), None if it has none
    (no checkpoint, or not at the final step)."""
    try:
        _, state = final_state(run_dir)
    except ValueError:
        return None
    factors = [state[k] for k in sorted(k for k in state if k.startswith("factors."))]
    return [state["core"], *factors]


def das_vs_adam(root: Path, runs: dict) -> list[list]:
    """How far DAS's final iterate is from Adam's (same split, same init, same data)."""
    body = []
    for (protocol, method, seed), summary in sorted(runs.items()):
        if method != "das" or (protocol, "adam", seed) not in runs:
            continue
        if FINISHED != summary.get("status") or FINISHED != runs[(protocol, "adam", seed)].get(
                "status"):
            continue  # a diverged run has no final iterate (its checkpoint is an earlier one)
        das, adam = (final_model(root / protocol / DIRS[m] / seed) for m in ("das", "adam"))
        if das is None or adam is None:
            continue
        flat_das, flat_adam = (torch.cat([c.flatten() for c in m]) for m in (das, adam))
        diff = float((flat_das - flat_adam).abs().max())
        rel = float((flat_das - flat_adam).norm() / flat_adam.norm())
        recon = float((tucker_to_tensor(das[0], das[1:])
                       - tucker_to_tensor(adam[0], adam[1:])).abs().max())
        other = runs[(protocol, "adam", seed)]
        body.append([protocol, seed, f"{diff:.3e}", f"{rel:.3e}", f"{recon:.3e}",
                     f"{summary['r2_observed'] - other['r2_observed']:+.2e}",
                     f"{summary['norm/Q']:.4g}", f"{other['norm/Q']:.4g}"])
    return body


def loss_peaks(root: Path, runs: dict) -> list[list]:
    """Largest logged (finite) training loss of each DAS run next to Adam's (every
    ``log_every`` steps), and the final loss; a diverged run's final loss is "diverged at step
    N". A run that cannot be read is named."""
    body = []
    for (protocol, method, seed) in sorted(runs):
        if method != "das" or (protocol, "adam", seed) not in runs:
            continue
        peaks = []
        for m in ("das", "adam"):
            key, path = (protocol, m, seed), root / protocol / DIRS[m] / seed / "metrics.jsonl"
            summary = runs[key]
            try:
                log = [r for r in read_jsonl(path)
                       if isinstance(r.get("train/loss"), (int, float))]  # null: non-finite
            except ValueError as err:
                raise SystemExit(f"tensam: run {name_of(key)}: {err}") from None
            top = max(log, key=lambda r: r["train/loss"]) if log else None
            final = summary.get("train/loss")
            peaks += [f"{top['train/loss']:.4g} (step {top['step']})" if top else "-",
                      f"diverged at step {summary.get('diverged_at_step')}"
                      if summary.get("status") == DIVERGED
                      else f"{final:.4g}" if isinstance(final, (int, float)) else "-"]
        body.append([protocol, seed, *peaks])
    return body


def lambda_section(diag: dict) -> str:
    out = []
    for protocol in PROTOCOLS:
        record = diag.get("lambda_" + protocol)
        if record is None:
            continue
        lam = np.asarray(record["das"]["lam"])
        das_loss, adam_loss = record["das"]["loss"], record["adam"]["loss"]
        peak = int(np.argmax(das_loss))
        first = ", ".join(f"{c} {v:+.3e}" for c, v in zip(record["das"]["cores"], lam[0],
                                                              strict=True))
        out.append(
            f"- `{protocol}`: lambda at step 0: {first}; max |lambda| over the first {len(lam)} "
            f"steps {np.abs(lam).max():.3e} (step {int(np.abs(lam).max(axis=1).argmax())}); "
            f"steps with max |lambda| > 0.01: {int((np.abs(lam).max(axis=1) > 0.01).sum())}. "
            f"Loss at step 0 {das_loss[0]:.4g}; DAS peaks at {das_loss[peak]:.4g} (step {peak}) "
            f"and is {das_loss[-1]:.4g} at step {len(das_loss) - 1} vs Adam {adam_loss[-1]:.4g}. "
            f"Optimizer lambda vs an independent float64 evaluation of Algorithm 2: max relative "
            f"difference {record['das']['max_rel_diff_vs_float64']:.1e}.")
    return "\n".join(out) + "\n"


def hooi_study_table(study: dict) -> str:
    keys = [k.split("/") for k in study if k.count("/") == 2]
    sweeps = sorted({int(k[2]) for k in keys})
    header = ["protocol", "setup", *[f"{n} sweeps: heldout / observed" for n in sweeps]]
    body = []
    for protocol, setup in dict.fromkeys((k[0], k[1]) for k in keys):
        body.append([protocol, setup, *[
            f"{study[f'{protocol}/{setup}/{n}']['r2_heldout']:.3f} / "
            f"{study[f'{protocol}/{setup}/{n}']['r2_observed']:.3f}" for n in sweeps]])
    return markdown_table(header, body)


def ceiling_lines(ceiling: dict) -> str:
    out = [f"- rank {tuple(ceiling['rank'])} HOOI on the complete tensor ({ceiling['full_sweeps']} "
           f"sweeps): R2 over all entries {ceiling['full_r2_all']:.4f}"]
    for protocol in PROTOCOLS:
        splits = [v for k, v in ceiling.items() if k.startswith(protocol + "/")]
        if splits:
            full = mean_std([s["full_r2_heldout"] for s in splits])
            oracle = mean_std([s["oracle_r2_heldout"] for s in splits])
            out.append(f"- `{protocol}` held-out entries ({len(splits)} splits): R2 of that "
                       f"complete-tensor fit {fmt_mean_std(*full)}; oracle (masked HOOI fitted "
                       f"to the held-out entries themselves, {splits[0]['oracle_sweeps']} sweeps) "
                       f"{fmt_mean_std(*oracle)}")
    return "\n".join(out) + "\n"


def run_info(runs: dict) -> str:
    """Training time of the gradient runs and of HOOI (their summaries' ``seconds`` and
    ``baselines_seconds``) and this machine."""
    info = machine_info()
    by_method = {m: [s["seconds"] for k, s in runs.items() if k[1] == m] for m in GRADIENT}
    total = sum(sum(v) for v in by_method.values())
    hooi = [s["baselines_seconds"] for k, s in runs.items()
            if k[1] == "hooi" and s.get("baselines_seconds") is not None]
    hooi_text = (f"HOOI {sum(hooi):.0f} s over its {len(hooi)} runs (longest {max(hooi):.0f} s)"
                 if hooi else "HOOI's time is not recorded")
    return (f"- Training time summed over the {sum(map(len, by_method.values()))} gradient runs "
            f"{total:.0f} s (1 torch thread each; {hooi_text}); mean per run: "
            + ", ".join(f"{METHODS[m]} {np.mean(v):.0f} s" for m, v in by_method.items() if v)
            + f"\n- Table built on: {info['cpus']}-core CPU ({info['cpu']}); Python "
            f"{info['python']}, torch {info['torch']}, numpy {info['numpy']}\n")


#: the stages of ``make reproduce-table1`` in their order (the Makefile's --stage names)
STAGES = {"training": "training (18 gradient runs, 2 at a time)",
          "hooi": "HOOI (6 runs of 0 steps with baselines, 2 at a time)",
          "diagnostics": "diagnostics (`scripts/table1_diagnostics.py`)"}


def stage_times(log: Path, builder_seconds: float) -> str:
    """Wall time of each stage of the target from its stage log (``tensam.reports.stages``),
    and this builder's own."""
    records = latest(log)
    if not records:
        return (f"Stage wall times are not recorded for these runs (no `{log.name}`: the runs "
                f"were not made by `make reproduce-table1`). This builder: "
                f"{builder_seconds:.1f} s.\n")
    rows = [[STAGES.get(name, name), f"{r['seconds']:.0f}", r["started"],
             "-" if r["load"] is None else f"{r['load']:.2f}"] for name, r in records.items()]
    rows.append(["table builder (this file, up to writing it)", f"{builder_seconds:.1f}", "-",
                 "-"])
    total = sum(r["seconds"] for r in records.values()) + builder_seconds
    cpus = next(iter(records.values()))["cpus"]
    return (markdown_table(["stage", "wall time (s)", "started", "load average before"], rows)
            + f"\nTotal {total:.0f} s ({total / 60:.1f} min) on {cpus} CPUs."
            " A stage that resumed an interrupted target skipped its finished runs and "
            "took less than a full one.\n")


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def diagnostics(root: Path, runs: dict, diag: dict) -> str:
    """The diagnostics sections: those whose data the runs and ``table1_diagnostics`` left."""
    md = []
    if "ceiling" in diag:
        md += ["## Diagnostics\n", "### How much a rank-(8,6,8) Tucker model can explain\n",
               ceiling_lines(diag["ceiling"])]
    if "hooi_study" in diag:
        md += ["### Masked HOOI (tensorly) vs sweeps, split 0: R2 held-out / R2 observed\n",
               hooi_study_table(diag["hooi_study"])]
    body = das_vs_adam(root, runs)
    if body:
        md += ["### DAS vs Adam: final iterates (same split, init and data)\n", markdown_table(
            ["protocol", "split", "max abs core difference", "rel. L2 difference",
             "max abs reconstruction difference", "r2_observed DAS - Adam", "final Q DAS",
             "final Q Adam"], body)]
    body = loss_peaks(root, runs)
    if body:
        md += ["### DAS vs Adam: largest logged training loss and final loss\n", markdown_table(
            ["protocol", "split", "DAS peak loss", "DAS final loss", "Adam peak loss",
             "Adam final loss"], body)]
    if any(k.startswith("lambda_") for k in diag):
        md += ["### DAS scale factors lambda_k (Algorithm 2) over the first steps, split 0\n",
               lambda_section(diag)]
    return "\n".join(md)


def builder_seconds(started: float, argv: list[str] | None) -> float:
    """This build's wall time: since the process started (imports included) when run from the
    command line (``argv`` None), else since ``main`` was called."""
    return (argv is None and process_seconds()) or time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = Path("runs") / "table1"
    parser.add_argument("--root", type=Path, default=default_root)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    method_of = {d: m for m, d in DIRS.items()}
    runs = {(k[0], method_of[k[1]], k[2]): s for k, s in load_summaries(args.root).items()
            if len(k) == 3 and k[0] in PROTOCOLS and k[1] in method_of}
    diag = {p.stem: json.loads(p.read_text()) for p in (args.root / "diagnostics").glob("*.json")}
    if not runs:
        parser.error(f"no runs under {args.root}; run `make reproduce-table1` first")
    try:
        check_settings(runs)
        rows = aggregate(runs)
    except ValueError as err:  # mixed settings, or a finished run without its metric
        raise SystemExit(f"tensam: {err}") from None
    configs = {p: {m: next(s["config"] for k, s in runs.items() if k[:2] == (p, m))
                   for m in ("sam", "das")} for p in PROTOCOLS
               if all(any(k[:2] == (p, m) for k in runs) for m in ("sam", "das"))}
    hooi = {p: [s for k, s in runs.items() if k[:2] == (p, "hooi") and s.get("status") == FINISHED]
            for p in PROTOCOLS}
    settings_lines = []
    for protocol, cfg in configs.items():
        settings_lines.append(f"- `{protocol}` (`experiment={cfg['das']['name']}`, objective "
                              f"`{cfg['das']['objective']}`): {settings(cfg['sam'], cfg['das'])}")
        if hooi[protocol]:
            sweeps = mean_std([s["baselines"]["hooi"]["iterations"] for s in hooi[protocol]])
            settings_lines.append(
                f"  - HOOI: tensorly `tucker(X * M, mask=M, init='random', tol=1e-5)`, up to "
                f"{hooi[protocol][0]['config']['task']['hooi_iter']} sweeps; stopped after "
                f"{fmt_mean_std(*sweeps, 0)} sweeps")
    seeds = sorted({k[2] for k in runs})
    root = "" if args.root.resolve() == default_root.resolve() else f" --root {args.root}"
    text = render("table1", agree=f"{AGREE:g}", abs_tol=f"{ABS_TOL:g}",
                  main_table=main_table(rows), verdict="\n".join(verdict(rows)),
                  settings="\n".join(settings_lines), seeds=", ".join(seeds), root=root,
                  run_info=run_info(runs), diagnostics=diagnostics(args.root, runs, diag),
                  stages=stage_times(args.root / "stages.jsonl", builder_seconds(started, argv)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table1.md").write_text(text)
    write_csv(rows, args.out / "table1.csv")
    print(text)
    print(f"wrote {args.out / 'table1.md'} and {args.out / 'table1.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
