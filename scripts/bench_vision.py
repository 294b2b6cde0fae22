"""Per-step cost of tensorized ResNets and of SAM/DAS on them (results/bench_vision.md).

Command-line wrapper of ``tensam.bench.vision`` (``python -m`` runs it too)."""

from tensam.bench.vision import main

if __name__ == "__main__":
    main()
