"""Table 3 (fine-tuning a TT-compressed network) from run directories, the paper's beside ours.

    python scripts/make_table3.py --root runs/table3                    # make reproduce-table3
    python scripts/make_table3.py --root runs/table3_cpu --out results/table3_cpu.md \\
        --title "..."                                                   # make reproduce-table3-cpu

Under ``--root``: ``before/summary.json`` (the compressed network scored without fine-tuning,
``steps=0``), ``<optimizer>/seed<k>/summary.json`` (the fine-tuning runs) and, at CPU scale,
``pretrain/summary.json`` (the dense network that was compressed). Accuracies are mean ± sample
std over seeds; "recovered" is the share of the accuracy lost by compression that fine-tuning
won back, (acc - before) / (dense - before). The step-time ratios divide each method's mean
s/step by SGD's. Nothing is read but the summaries.
"""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from pathlib import Path

from tensam.reports.format import (
    PAIRED_HEADER,
    fmt_mean_std,
    markdown_table,
    mean_std,
    paired_rows,
    write_report,
)
from tensam.reports.runs import load_summaries, method_of, optimizer_settings

#: the paper's Table 3 (TT-ResNet-18 on ImageNet-1k, 5 runs): (Top-1, Top-5) means and stds (%)
PAPER = {"before fine-tuning": ((36.74, None), (64.32, None)),
         "SGD": ((65.47, 0.14), (86.54, 0.14)),
         "SAM": ((66.27, 0.07), (87.12, 0.05)),
         "DAS": ((66.16, 0.21), (86.96, 0.05))}
#: the paper's runtime row (seconds per step on its GPUs)
PAPER_RUNTIME = {"SGD": 0.254, "SAM": 0.425, "DAS": 0.254}
ORDER = ("SGD", "SAM", "DAS")


def _paper(mean_std_pair) -> str:
    mean, std = mean_std_pair
    return f"{mean:.2f}" if std is None else fmt_mean_std(mean, std, digits=2)


def _ours(values: list[float]) -> str:
    mean, std = mean_std(values)
    return fmt_mean_std(mean, std, digits=2) if len(values) > 1 else f"{mean:.2f}"


def collect(summaries: dict) -> tuple[dict, dict]:
    """({"dense", "before fine-tuning"} -> summary, method -> finished fine-tuning summaries)."""
    single, methods = {}, defaultdict(list)
    for key, summary in summaries.items():
        if summary.get("status") != "finished":
            continue
        if key == ("pretrain",):
            single["dense"] = summary
        elif key == ("before",):
            single["before fine-tuning"] = summary
        else:
            methods[method_of(summary["config"])].append(summary)
    return single, methods


def rows(single: dict, methods: dict) -> list[list]:
    dense = single.get("dense", {}).get("accuracy")
    before = single.get("before fine-tuning", {}).get("accuracy")
    sgd_step = (mean_std([r["seconds_per_step"] for r in methods["SGD"]])[0]
                if methods.get("SGD") else None)
    out = []
    for name in ("dense", "before fine-tuning"):
        if name in single:
            s = single[name]
            paper = PAPER.get(name, ((None, None), (None, None)))
            top5 = f"{100 * s['top5']:.2f}" if "top5" in s else "-"  # not in older summaries
            out.append([name, f"{100 * s['accuracy']:.2f}", top5,
                        _paper(paper[0]) if paper[0][0] else "-",
                        _paper(paper[1]) if paper[1][0] else "-", "-", "-", "-", "-", 1, "-"])
    for method in sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else 9):
        runs = methods[method]
        top1 = [100 * r["accuracy"] for r in runs]
        recovered = "-"
        if dense is not None and before is not None:
            shares = [(r["accuracy"] - before) / (dense - before) for r in runs]
            recovered = f"{mean_std(shares)[0]:.0%}"
        step = mean_std([r["seconds_per_step"] for r in runs])[0]
        paper = PAPER.get(method)
        out.append([method, _ours(top1), _ours([100 * r["top5"] for r in runs]),
                    _paper(paper[0]) if paper else "-", _paper(paper[1]) if paper else "-",
                    recovered, f"{step:.3f}",
                    f"{step / sgd_step:.2f}x" if sgd_step else "-",
                    PAPER_RUNTIME.get(method, "-"), len(runs),
                    ", ".join(str(r["config"]["seed"]) for r in runs)])
    return out


def paired(methods: dict) -> list[list]:
    """Each method's Top-1 minus SGD's, paired by seed (:func:`paired_rows`)."""
    return paired_rows({m: {r["config"]["seed"]: 100 * r["accuracy"] for r in runs}
                        for m, runs in methods.items()}, "SGD")


def compression(summary: dict) -> str:
    """One line: the compressed layers' parameters before/after and reconstruction errors."""
    layers = summary.get("model_info", {}).get("compression")
    if not layers:
        return ""
    before = sum(r["params_before"] for r in layers)
    after = sum(r["params_after"] for r in layers)
    errors = [r["rel_error"] for r in layers if r["rel_error"] is not None]
    ranks = sorted({tuple(r["ranks"]) for r in layers})
    return (f"Compression: {len(layers)} layers by TT-SVD, {before:,} -> {after:,} weights "
            f"({after / before:.1%}); the whole network has "
            f"{summary['model_info']['parameters']:,} parameters; TT-ranks {ranks}; relative "
            f"reconstruction error ||W - W_tt|| / ||W|| per layer "
            f"{min(errors):.3f}-{max(errors):.3f}." if errors else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/table3.md"))
    parser.add_argument("--title", default="Table 3: TT-ResNet-18 fine-tuned on ImageNet-1k")
    args = parser.parse_args()
    summaries = load_summaries(args.root)
    single, methods = collect(summaries)
    if not methods:
        raise SystemExit(f"no finished fine-tuning runs under {args.root}")
    first = next(iter(methods.values()))[0]
    cfg = first["config"]
    header = ["", "ours: Top-1 (%)", "ours: Top-5 (%)", "paper: Top-1", "paper: Top-5",
              "recovered", "ours: s/step", "ours: vs SGD", "paper: s/step (GPU)", "n", "seeds"]
    text = [f"# {args.title}", "",
            f"Generated by `python scripts/make_table3.py --root {args.root}` on "
            f"{datetime.date.today()} from {len(summaries)} run summaries. Ours: mean ± sample "
            "std over seeds, scored on the evaluation split "
            f"(`{cfg['task'].get('data', {}).get('eval_split', 'val')}`). The paper's numbers "
            "are copied from its Table 3 (TT-ResNet-18, ImageNet-1k, 5 runs). \"recovered\" is "
            "(acc - before) / (dense - before): the share of the Top-1 accuracy lost by "
            "compression that fine-tuning won back.", "",
            markdown_table(header, rows(single, methods)),
            "Top-1 differences paired by seed (the same compressed network, data order and "
            "augmentations for a seed):", "",
            markdown_table(PAIRED_HEADER, paired(methods)),
            compression(single.get("before fine-tuning", first)), "",
            f"Fine-tuning: model `{cfg['model']['_target_']}`, {cfg['epochs']} epochs, batch "
            f"{cfg['task']['batch_size']}, scheduler `{cfg['scheduler']['_target_']}`; optimizer "
            f"settings: {optimizer_settings(summaries.values())}.", ""]
    write_report(args.out, text, summaries,
                 "under whatever else the machine was running; CPU runs went two at a time.")


if __name__ == "__main__":
    main()
