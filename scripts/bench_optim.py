"""Per-step cost of SAM and DAS relative to the same base optimizer (results/bench_optim.md).

Command-line wrapper of ``tensam.bench.optim`` (``python -m`` runs it too)."""

from tensam.bench.optim import main

if __name__ == "__main__":
    main()
