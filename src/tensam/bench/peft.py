"""Per-step time and memory of Adam, SAM and DAS on tensor adapters (Table 6's comparison).

    python scripts/bench_peft.py                       # MiniLM, CPU -> results/bench_peft.md
    python scripts/bench_peft.py --device cuda         # on a GPU -> results/bench_peft_gpu.md
    python scripts/bench_peft.py --model opt_6.7b_random --device cuda --precision bf16 \
        --batch 2 --length 256 --out results/table6.md  # Table 6 (make reproduce-table6)

``--model minilm``: all-MiniLM-L6-v2 (the packaged BERT) with FLoRA (r 8, alpha 16) and
LoRETTA_rep (r 8, TT rank 16) on query/value and a classification head, cross-entropy of random
labels. ``--model opt_tiny`` / ``opt_6.7b_random``: the OPT of that model config (random weights)
with its LoRETTA_rep on q_proj/v_proj, the next-token loss. Batches of ``--batch`` random token
sequences of length ``--length``. For every adapter, Adam (AdamW for the OPTs, Table 5's base),
SAM (rho 0.01) and DAS (alpha 0.5) over the same base step in one process, interleaved in blocks
(:func:`tensam.bench.common.interleaved_times`); the ratio is the median over blocks of the
paired ratio.
``--precision bf16``: the frozen base weights in bf16, the adapters in fp32, bf16 autocast.
Memory: the bytes of each optimizer's state (Adam's moments, DAS's residuals), and on a GPU the
peak allocated memory of a step.
"""

from __future__ import annotations

import os
import statistics
from types import SimpleNamespace

import torch
from torch.nn import functional as F

from tensam.bench.common import bench_machine, bench_parser, interleaved_times, write_bench
from tensam.config import compose
from tensam.optim import build_optimizer
from tensam.reports.format import adapter_label, markdown_table
from tensam.reports.runs import config
from tensam.tasks import build_model

#: label -> the optimizer config's overrides (over the base of the model's configuration)
OPTIMIZERS = {"Adam": ["optimizer=none"], "SAM": ["optimizer=sam", "optimizer.rho=0.01"],
              "DAS": ["optimizer=das", "optimizer.alpha=0.5"]}
#: the adapters of model=minilm measured (configs/model/adapter/)
MINILM_ADAPTERS = ("flora", "loretta_rep")
TARGETS = {"SAM": 2.05, "DAS": 1.05}


def configurations(model: str) -> tuple[dict[str, dict], list[str]]:
    """(adapter label -> model config, the base optimizer's overrides) of ``--model``."""
    if model == "minilm":
        models = [config(["model=minilm", f"model/adapter={name}"])["model"]
                  for name in MINILM_ADAPTERS]
        return ({adapter_label(m["adapter"]): m for m in models},
                ["optimizer/base=adam", "optimizer.base.lr=1e-3"])
    cfg = config([f"model={model}", "task=causal_lm"])["model"]
    return {adapter_label(cfg["adapter"]): cfg}, ["optimizer/base=adamw", "optimizer.base.lr=1e-4",
                          "optimizer.base.weight_decay=0.01"]


def build(model_cfg: dict, device: torch.device, precision: str) -> torch.nn.Module:
    """The model of ``model_cfg`` on ``device``; bf16: frozen weights in bf16, adapters fp32."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_model(model_cfg, SimpleNamespace(model_inputs=dict))
    finally:
        torch.set_default_dtype(default)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def state_bytes(optimizer) -> int:
    """Bytes of the tensors in the optimizer's state (and its base's, for a wrapper)."""
    total, seen = 0, set()
    for opt in (optimizer, getattr(optimizer, "base", None)):
        for state in (opt.state.values() if opt is not None else ()):
            for t in state.values():
                if torch.is_tensor(t) and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


def measure(args, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    adapters, base = configurations(args.model)
    causal = args.model != "minilm"
    ids = torch.randint(1000, 30000, (args.batch, args.length), generator=gen).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(2, (args.batch,), generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def loss_of(model):
        logits = model(batch)
        if causal:  # next-token loss
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        return F.cross_entropy(logits.float(), labels)

    runs, memory = {}, {}
    for adapter, model_cfg in adapters.items():
        for name, method in OPTIMIZERS.items():
            torch.manual_seed(0)
            model = build(model_cfg, device, args.precision)
            opt_cfg = compose(*method, *base, keys=("optimizer",))["optimizer"]
            optimizer = build_optimizer(opt_cfg, model, total_steps=10**6)

            def step(model=model, optimizer=optimizer):
                def closure():
                    optimizer.zero_grad(set_to_none=True)
                    with autocast:
                        loss = loss_of(model)
                    loss.backward()
                    return loss
                optimizer.step(closure)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(args.warmup):
                step()
            key = f"{adapter} {name}"
            memory[key] = {"state_bytes": state_bytes(optimizer)}
            if device.type == "cuda":
                memory[key]["peak_bytes"] = torch.cuda.max_memory_allocated()
            runs[key] = step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return interleaved_times(runs, args.blocks, args.steps, sync), memory


DESCRIPTION = ("all-MiniLM-L6-v2, adapters on query/value (12 layers) and a classification head, "
               "Adam lr 1e-3",
               "OPT (random weights) with LoRETTA_rep on q_proj/v_proj, next-token loss, AdamW "
               "lr 1e-4 (labelled Adam below)")


def report(times: dict, memory: dict, args, machine: dict) -> str:
    median = {n: statistics.median(t) for n, t in times.items()}
    gpu = "peak_bytes" in next(iter(memory.values()))
    rows = [[n, f"{1e3 * median[n]:.1f}", f"{memory[n]['state_bytes'] / 2**20:.2f}"]
            + ([f"{memory[n]['peak_bytes'] / 2**20:.0f}"] if gpu else []) for n in times]
    checks = []
    for adapter in dict.fromkeys(n.rsplit(" ", 1)[0] for n in times):
        ref = f"{adapter} Adam"
        for method, target in TARGETS.items():
            name = f"{adapter} {method}"
            paired = [a / b for a, b in zip(times[name], times[ref], strict=True)]
            ratio = statistics.median(paired)
            checks.append([name, ref, f"{ratio:.3f}x", f"{min(paired):.3f}-{max(paired):.3f}",
                           f"<= {target}x", "PASS" if ratio <= target else "FAIL"])
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpus']} cores)"
    return "\n".join([
        f"# Tensor adapters on {args.model}: step time of Adam, SAM and DAS on "
        f"{args.device.upper()}", "", f"Command: `{machine['command']}`  ",
        f"Date (UTC): {machine['date']}  ",
        f"Device: {device}; torch {machine['torch']}, torch threads {machine['threads']}; "
        f"load average before / after: {machine['load']}.  ",
        f"{DESCRIPTION[args.model != 'minilm']}; batch {args.batch} x {args.length} tokens, "
        f"{args.precision}; {args.warmup} warm-up steps, then {args.blocks} interleaved blocks "
        f"of {args.steps} steps per configuration; median over blocks. SAM rho 0.01; DAS alpha "
        "0.5 (over the same base step). The paper's Table 6 (LoRETTA on OPT-6.7B, GPU): Adam "
        "1x, SAM 2x, DAS 1.04x.", "",
        markdown_table(["configuration", "ms/step", "optimizer state (MiB)"]
                       + (["peak allocated (MiB)"] if gpu else []), rows),
        markdown_table(["configuration", "reference", "ratio (median of paired blocks)",
                        "range over blocks", "target", "result"], checks)])


def main() -> None:
    parser = bench_parser(__doc__, steps=5, threads=2)
    parser.add_argument("--model", default="minilm",
                        choices=("minilm", "opt_tiny", "opt_6.7b_random"),
                        help="minilm, or the OPT of a model config (random weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    times, memory = measure(args, device)
    machine = bench_machine("bench_peft.py", args.threads, load, device)
    name = "bench_peft" if args.model == "minilm" else f"bench_peft_{args.model}"
    name += "_bf16" if args.precision == "bf16" else ""  # the fp32 file keeps the targets
    write_bench(name, args.out, device, report(times, memory, args, machine),
                {"machine": machine, "times_s": times, "memory": memory})


if __name__ == "__main__":
    main()
