"""Table 4's comparison (tensor adapters with Adam, SAM and DAS on few-shot GLUE) from run
directories, the paper's RoBERTa-large numbers beside ours.

    python scripts/make_table4.py --root runs/table4_cpu --out results/table4_cpu.md
                                                          # make reproduce-table4-cpu (MiniLM)

Every finished ``summary.json`` under ``--root`` is one run, scored at its best checkpoint on
validation as LM-BFF and MeZO score a run (the evaluation every ``eval_every`` steps with the
best validation accuracy, the summary's ``best/*``; ``--checkpoint last``, or a run without
evaluations during training: its final evaluation); runs are grouped by (adapter, method)
and GLUE task (and k, where the runs hold several); per data seed the run with the best
validation accuracy is kept (a grid of learning rates and rho / alpha, or one setting; a tie goes
to the first run in path order), and the table reports mean ± sample std over
data seeds of its test accuracy (the GLUE dev set, at most 1,000 examples), with the validation
accuracy, the trainable parameters and the wall time per step. Runs without a training step
(``steps=0``) are the zero-shot row. Nothing is read but the summaries.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

from tensam.reports.format import (
    PAIRED_HEADER,
    adapter_label,
    fmt_mean_std,
    markdown_table,
    mean_std,
    paired_rows,
    write_report,
)
from tensam.reports.runs import (
    CHECKPOINTS,
    best_on_validation,
    checkpoint_note,
    load_summaries,
    method_of,
    optimizer_settings,
)
from tensam.tasks import build_model

#: the paper's Table 4 (RoBERTa-large, k = 512, 5 data seeds): row -> task -> (mean, std) (%);
#: its zero-shot row (LM-BFF's, one number) has std 0
TASKS = ("sst2", "sst5", "snli", "mnli", "rte", "trec")
PAPER = {name: dict(zip(TASKS, values, strict=True)) for name, values in {
    "zero-shot": ((79.0, 0), (35.5, 0), (50.2, 0), (48.8, 0), (51.4, 0), (32.0, 0)),
    "full fine-tuning": ((94.01, 0.46), (56.84, 0.86), (88.38, 0.43), (84.32, 0.72),
                         (83.16, 1.67), (96.92, 0.55)),
    "LoRA (r 8)": ((90.53, 1.10), (51.60, 0.77), (83.58, 1.24), (76.38, 2.99), (77.55, 4.32),
                   (95.72, 0.41)),
    "FLoRA ADAM": ((93.99, 0.26), (56.70, 0.80), (87.70, 0.54), (83.96, 0.67), (83.61, 1.30),
                   (96.64, 0.34)),
    "FLoRA SAM": ((93.76, 0.48), (56.76, 1.39), (88.16, 0.67), (83.56, 0.73), (83.68, 1.62),
                  (97.08, 0.27)),
    "FLoRA DAS": ((93.94, 0.56), (56.82, 0.90), (87.90, 0.57), (84.28, 0.63), (83.97, 0.87),
                  (96.80, 0.42))}.items()}
ORDER = ("zero-shot", "full fine-tuning", "LoRA", "FLoRA", "LoRETTA_rep", "LoRETTA_tt")
METHODS = ("ADAM", "ADAMW", "SAM", "DAS")


def row_name(config: dict) -> str:
    """'zero-shot' (no training step), 'full fine-tuning', 'LoRA (r 8)' (Adam) or
    '<adapter> <method>'."""
    if config.get("steps") == 0 and not config.get("epochs"):
        return "zero-shot"
    adapter = config["model"].get("adapter")
    method = method_of(config)
    if adapter is None:
        name = "full fine-tuning"
        return name if method in ("ADAM", "ADAMW") else f"{name} {method}"
    name = adapter_label(adapter)
    if name == "LoRA" and method in ("ADAM", "ADAMW"):
        return f"{name} (r {adapter['r']})"
    return f"{name} {method}"


def task_label(config: dict, ks: set[int]) -> str:
    """The table's column for a run: its GLUE task, with its k where ``ks`` (the k of every run
    read) holds several, e.g. ``sst2 k=16``."""
    task = config["task"]
    return task["name"] if len(ks) == 1 else f"{task['name']} k={task['k']}"


@functools.cache
def _trainable(model_json: str, num_labels: int) -> int:
    """Trainable parameters of a run's model, rebuilt from its config (older summaries lack
    ``model_info``)."""
    model = build_model(json.loads(model_json), SimpleNamespace(
        model_inputs=lambda: {"num_labels": num_labels}))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable(summary: dict) -> int:
    if "model_info" in summary:
        return summary["model_info"]["trainable"]
    cfg = summary["config"]
    return _trainable(json.dumps(cfg["model"], sort_keys=True),
                      len(summary["data"]["train_labels"]))


def _order(name: str) -> tuple:
    head, _, method = name.partition(" ")
    kind = next((i for i, a in enumerate(ORDER) if name.startswith(a)), 9)
    return kind, METHODS.index(method) if method in METHODS else -1, head


def paired(groups: dict) -> list[list]:
    """Per task and adapter, each method's test accuracy minus the adapter's with Adam(W),
    paired by data seed (:func:`paired_rows`)."""
    out = []
    tasks = sorted({t for g in groups.values() for t in g})
    adapters = {name.rsplit(" ", 1)[0] for name in groups if name.rsplit(" ", 1)[-1] in METHODS}
    for task in tasks:
        for adapter in sorted(adapters, key=_order):
            values = {name: {r["config"]["task"]["data_seed"]: 100 * r["accuracy"]
                             for r in groups[name].get(task, [])}
                      for name in groups if name.rsplit(" ", 1)[0] == adapter}
            base = next((f"{adapter} {m}" for m in ("ADAM", "ADAMW") if f"{adapter} {m}"
                         in values), None)
            if base is not None:
                out += [[task, *row] for row in paired_rows(values, base)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/table4.md"))
    parser.add_argument("--title", default=None, help="the report's heading (default: the "
                        "model and 'few-shot GLUE')")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                        help="score each run at its best evaluation on validation (LM-BFF / "
                        "MeZO) or at its last")
    args = parser.parse_args()
    summaries = load_summaries(args.root)
    groups = defaultdict(lambda: defaultdict(list))
    ks = {s["config"]["task"]["k"] for s in summaries.values()}
    best = best_on_validation(summaries.values(), lambda s: (
        row_name(s["config"]), task_label(s["config"], ks), s["config"]["task"]["data_seed"]),
        lambda s: "val_accuracy", args.checkpoint)
    for (name, task, _), s in best.items():
        groups[name][task].append(s)
    if not groups:
        raise SystemExit(f"no finished runs under {args.root}")
    tasks = sorted({t for g in groups.values() for t in g}, key=lambda t: (
        TASKS.index(t.split()[0]) if t.split()[0] in TASKS else 9, len(t), t))
    header = ["", "trainable params"]
    for t in tasks:
        header += [f"ours: {t} test acc. (%)", f"ours: {t} val acc.", f"paper: {t}",
                   f"ours: {t} s/step", f"{t} seeds"]
    body = []
    for name in sorted(groups, key=_order):
        first = next(iter(groups[name].values()))[0]
        row = [name, f"{trainable(first):,}"]
        for t in tasks:
            runs = groups[name].get(t, [])
            if not runs:
                row += ["-"] * 5
                continue
            test = mean_std([100 * r["accuracy"] for r in runs])
            val = mean_std([100 * r["val_accuracy"] for r in runs])
            paper = PAPER.get(name, {}).get(t.split()[0])
            row += [fmt_mean_std(*test, digits=2), fmt_mean_std(*val, digits=2),
                    fmt_mean_std(*paper, digits=2) if paper else "-",
                    f"{mean_std([r['seconds_per_step'] for r in runs])[0]:.3f}",
                    ", ".join(str(r["config"]["task"]["data_seed"]) for r in runs)]
        body.append(row)
    configs = [s["config"] for s in summaries.values()]
    cfg = next((c for c in configs if c["steps"] or c.get("epochs")), configs[0])  # a trained
    # run's, where there is one: a zero-shot run has no steps
    searched = len([s for s in summaries.values() if s.get("status") == "finished"]) > len(best)
    protocol = (f"the configuration with the best validation accuracy of each data seed's grid "
                f"({len(summaries)} runs for {len(best)} cells; a tie goes to the first run in "
                f"path order)" if searched else
                f"one setting per method (no search): {optimizer_settings(summaries.values())}")
    paper = ("the paper's own setting" if "roberta-large" in str(cfg["model"].get("pretrained"))
             else "a different, much larger model, shown for the order of the methods, not for "
             "the level")
    title = args.title or f"Table 4's comparison: {cfg['model'].get('pretrained')} on few-shot GLUE"
    text = [f"# {title}", "",
            f"Generated by `python scripts/make_table4.py --root {args.root} --checkpoint "
            f"{args.checkpoint}{f' --title {title!r}' if args.title else ''}` on "
            f"{datetime.date.today()} from {len(summaries)} run summaries. Ours: mean ± sample "
            f"std over data seeds of the accuracy on the GLUE dev set (test); k = "
            f"{'/'.join(map(str, sorted(ks)))} examples per class for training and k for "
            f"validation, "
            f"{cfg['steps']} steps of batch {cfg['task']['batch_size']}, max length "
            f"{cfg['task']['max_length']}; {checkpoint_note(best.values())}; {protocol}. The "
            f"paper's column is RoBERTa-large "
            f"(355M, a masked LM with prompts, k = 512) from its Table 4: {paper}.", "",
            markdown_table(header, body),
            "Test accuracy of each method against the same adapter with the base optimizer, "
            "paired by data seed:", "", markdown_table(["task", *PAIRED_HEADER], paired(groups))]
    write_report(args.out, text, summaries,
                 "under whatever else ran (two runs at a time, one thread each): compare "
                 "methods' costs with `make bench-peft`, which times them side by side.")


if __name__ == "__main__":
    main()
