"""Table 5 (LoRETTA with Adam, SAM and DAS on OPT-6.7B, SuperGLUE and generation) from run
directories, the paper's numbers beside ours.

    python scripts/make_table5.py --root runs/table5 --out results/table5.md  # reproduce-table5
    python scripts/make_table5.py --root runs/table5_cpu --out results/table5_cpu.md

Each run is scored at its best checkpoint as LoRETTA's script scores it (the evaluation every
``eval_every`` steps with the best objective, table5's lowest validation loss: the summary's
``best/*``; ``--checkpoint last``, or a run without evaluations during training: its final
evaluation). Runs are grouped by row (zero-shot, full fine-tuning, LoRA, '<adapter> <method>')
and task; per data seed the run with the best validation score is kept (the grid of Table 11),
and the table reports its test score, mean ± sample std where there are several data seeds. The
score is
``--metric code`` (default): accuracy for the multiple-choice tasks and F1 for SQuAD and DROP,
what MeZO's and LoRETTA's code computes; or ``--metric text``: F1 for all but BoolQ and COPA, as
the paper's App. B says (macro-F1 for CB and WSC, SuperGLUE's token F1 for ReCoRD).
"""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path

from tensam.reports.format import fmt_mean_std, markdown_table, mean_std, write_report
from tensam.reports.runs import (
    CHECKPOINTS,
    best_on_validation,
    checkpoint_note,
    load_summaries,
    optimizer_settings,
)
from tensam.reports.table4 import row_name, trainable

TASKS = ("cb", "boolq", "wsc", "copa", "record", "squad", "drop")
#: the paper's Table 5 (OPT-6.7B, one run): row -> task -> score (%)
PAPER = {name: dict(zip(TASKS, values, strict=True)) for name, values in {
    "zero-shot": (60.7, 65.9, 37.5, 80, 76.9, 69.5, 26.4),
    "full fine-tuning": (71.4, 68.7, 63.5, 82, 78.7, 81.8, 29.2),
    "LoRA (r 16)": (87.5, 77.8, 63.5, 81, 77.1, 85.9, 32.7),
    "LoRETTA_rep ADAMW": (80.4, 76.6, 58.7, 80, 77.3, 86.7, 32.1),
    "LoRETTA_rep SAM": (85.7, 78.6, 63.5, 77, 76.8, 88.7, 31.8),
    "LoRETTA_rep DAS": (82.1, 77.2, 63.5, 81, 77.2, 86.2, 32.7)}.items()}
GENERATION = ("squad", "drop")


def metric(task: str, reading: str) -> str:
    """The test metric of ``task`` under the code's or the paper text's reading."""
    if task in GENERATION or (reading == "text" and task not in ("boolq", "copa")):
        return "f1"
    return "accuracy"


def _order(name: str) -> tuple:
    rows = list(PAPER)
    return (rows.index(name) if name in rows else len(rows), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/table5.md"))
    parser.add_argument("--metric", choices=("code", "text"), default="code")
    parser.add_argument("--title", default="Table 5: prompted causal-LM fine-tuning")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                        help="score each run at its best evaluation (LoRETTA's "
                        "load_best_model_at_end) or at its last")
    args = parser.parse_args()
    summaries = load_summaries(args.root)
    best = best_on_validation(summaries.values(), lambda s: (
        row_name(s["config"]), s["config"]["task"]["name"], s["config"]["task"]["data_seed"]),
        lambda s: "val_" + metric(s["config"]["task"]["name"], args.metric), args.checkpoint)
    groups = defaultdict(lambda: defaultdict(list))
    for (name, task, _), s in best.items():
        groups[name][task].append(s)
    if not groups:
        raise SystemExit(f"no finished runs under {args.root}")
    tasks = sorted({t for g in groups.values() for t in g},
                   key=lambda t: (TASKS.index(t) if t in TASKS else len(TASKS), t))
    header = ["", "trainable params"]
    for t in tasks:
        header += [f"ours: {t} {metric(t, args.metric)} (%)", f"paper: {t}"]
    header += ["ours: s/step", "data seeds"]
    body = []
    for name in sorted(groups, key=_order):
        runs = [r for t in tasks for r in groups[name].get(t, [])]
        row = [name, "-" if name == "zero-shot" else f"{trainable(runs[0]):,}"]
        for t in tasks:
            scores = [100 * r[metric(t, args.metric)] for r in groups[name].get(t, [])]
            paper = PAPER.get(name, {}).get(t)
            row += [(fmt_mean_std(*mean_std(scores), digits=1) if len(scores) > 1
                     else f"{scores[0]:.1f}" if scores else "-"),
                    f"{paper:g}" if paper is not None else "-"]
        steps = [r["seconds_per_step"] for r in runs if r["config"]["steps"] != 0
                 or r["config"].get("epochs")]
        row += [f"{mean_std(steps)[0]:.3f}" if steps else "-",
                ", ".join(sorted({str(r["config"]["task"]["data_seed"]) for r in runs}))]
        body.append(row)
    cfg = next(iter(best.values()))["config"]
    searched = len([s for s in summaries.values() if s.get("status") == "finished"]) > len(best)
    model = cfg["model"].get("pretrained") or f"a random {cfg['model']['config']['model_type']}"
    text = [f"# {args.title}", "",
            f"Generated by `python scripts/make_table5.py --root {args.root} --metric "
            f"{args.metric} --checkpoint {args.checkpoint}` on {datetime.date.today()} from "
            f"{len(summaries)} run summaries. Model: {model}. Ours: the test score of "
            + ("the configuration with the best validation score per data seed"
               if searched else "one setting per method (no search): "
               f"{optimizer_settings(summaries.values())}")
            + f", {checkpoint_note(best.values())}; n_train {cfg['task']['n_train']}, n_val "
            f"{cfg['task']['n_val']}, n_test "
            f"{cfg['task']['n_test']} (MeZO's sampler; a task with fewer training examples "
            "trains on what n_val leaves). The paper's column is OPT-6.7B with LoRETTA (its "
            "Table 5, one run; the paper's LoRETTA row is our LoRETTA_rep with AdamW).", "",
            markdown_table(header, body)]
    if not cfg["model"].get("pretrained"):
        text += ["", "**The model has random weights: these numbers test the code path "
                 "(prompting, option scoring, both losses, generation, metrics), not accuracy; "
                 "expect chance level.**"]
    write_report(args.out, text, summaries, "as each run measured it.")


if __name__ == "__main__":
    main()
