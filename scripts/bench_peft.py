"""Per-step time and memory of Adam, SAM and DAS on tensor adapters (Table 6's comparison).

    python scripts/bench_peft.py                       # MiniLM, CPU -> results/bench_peft.md
    python scripts/bench_peft.py --device cuda         # on a GPU -> results/bench_peft_gpu.md

all-MiniLM-L6-v2 (the packaged BERT) with FLoRA (r 8, alpha 16) and LoRETTA_rep (r 8, TT rank
16) on query/value and a classification head; batches of 16 random token sequences of length
``--length`` (SST-2's batches are about 40-60 tokens after trimming the padding). For every adapter,
Adam, SAM (rho 0.01) and DAS (alpha 0.5) over the same Adam step in one process, interleaved in
blocks (``_common.interleaved_times``); the ratio is the median over blocks of the paired ratio.
Memory: the bytes of each optimizer's state (Adam's moments, DAS's residuals), and on a GPU the
peak allocated memory of a step.
"""

from __future__ import annotations

import os
import statistics

import torch
from _common import bench_machine, bench_parser, interleaved_times, markdown_table, write_bench
from torch.nn import functional as F

from tensam.models import HFModel
from tensam.optim import build_optimizer

ADAM = {"name": "adam", "lr": 1e-3}
OPTIMIZERS = {"Adam": {"method": "none"}, "SAM": {"method": "sam", "rho": 0.01},
              "DAS": {"method": "das", "alpha": 0.5}}
ADAPTERS = {"FLoRA": {"kind": "flora", "r": 8, "alpha": 16},
            "LoRETTA_rep": {"kind": "loretta_rep", "r": 8, "alpha": 16}}
TARGETS = {"SAM": 2.05, "DAS": 1.05}


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


def measure(device: torch.device, length: int, warmup: int, blocks: int, steps: int):
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (16, length), generator=gen),
             "attention_mask": torch.ones(16, length, dtype=torch.long)}
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = torch.randint(2, (16,), generator=gen).to(device)
    runs, memory = {}, {}
    for adapter, options in ADAPTERS.items():
        for name, method in OPTIMIZERS.items():
            torch.manual_seed(0)
            model = HFModel(2, pretrained="minilm",
                            adapter={**options, "target_modules": ["query", "value"]}).to(device)
            optimizer = build_optimizer({**method, "base": ADAM}, model, total_steps=10**6)

            def step(model=model, optimizer=optimizer):
                def closure():
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(batch), labels)
                    loss.backward()
                    return loss
                optimizer.step(closure)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                step()
            key = f"{adapter} {name}"
            memory[key] = {"state_bytes": state_bytes(optimizer)}
            if device.type == "cuda":
                memory[key]["peak_bytes"] = torch.cuda.max_memory_allocated()
            runs[key] = step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return interleaved_times(runs, blocks, steps, sync), memory


def report(times: dict, memory: dict, args, machine: dict) -> str:
    median = {n: statistics.median(t) for n, t in times.items()}
    gpu = "peak_bytes" in next(iter(memory.values()))
    rows = [[n, f"{1e3 * median[n]:.1f}", f"{memory[n]['state_bytes'] / 2**20:.2f}"]
            + ([f"{memory[n]['peak_bytes'] / 2**20:.0f}"] if gpu else []) for n in times]
    checks = []
    for adapter in ADAPTERS:
        ref = f"{adapter} Adam"
        for method, target in TARGETS.items():
            name = f"{adapter} {method}"
            paired = [a / b for a, b in zip(times[name], times[ref], strict=True)]
            ratio = statistics.median(paired)
            checks.append([name, ref, f"{ratio:.3f}x", f"{min(paired):.3f}-{max(paired):.3f}",
                           f"<= {target}x", "PASS" if ratio <= target else "FAIL"])
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpus']} cores)"
    return "\n".join([
        f"# Tensor adapters on MiniLM: step time of Adam, SAM and DAS on {args.device.upper()}",
        "", f"Command: `{machine['command']}`  ", f"Date (UTC): {machine['date']}  ",
        f"Device: {device}; torch {machine['torch']}, torch threads {machine['threads']}; "
        f"load average before / after: {machine['load']}.  ",
        f"all-MiniLM-L6-v2, adapters on query/value (12 layers) and a classification head; "
        f"batch 16 x {args.length} tokens; {args.warmup} warm-up steps, then {args.blocks} "
        f"interleaved blocks of {args.steps} steps per configuration; median over blocks. "
        "Adam lr 1e-3; SAM rho 0.01; DAS alpha 0.5 (over the same Adam). The paper's Table 6 "
        "(LoRETTA on OPT-6.7B, GPU): Adam 1x, SAM 2x, DAS 1.04x.", "",
        markdown_table(["configuration", "ms/step", "optimizer state (MiB)"]
                       + (["peak allocated (MiB)"] if gpu else []), rows),
        markdown_table(["configuration", "reference", "ratio (median of paired blocks)",
                        "range over blocks", "target", "result"], checks)])


def main() -> None:
    parser = bench_parser(__doc__, steps=5, threads=2)
    parser.add_argument("--length", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    times, memory = measure(device, args.length, args.warmup, args.blocks, args.steps)
    machine = bench_machine("bench_peft.py", args.threads, load, device)
    write_bench("bench_peft", args.out, device, report(times, memory, args, machine),
                {"machine": machine, "times_s": times, "memory": memory})


if __name__ == "__main__":
    main()
