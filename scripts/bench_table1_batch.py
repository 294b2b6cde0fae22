"""Time per run-step of Table 1's runs stacked into one batched model, against one run alone
(results/bench_table1_batch.md).

Command-line wrapper of ``tensam.bench.table1_batch`` (``python -m`` runs it too)."""

from tensam.bench.table1_batch import main

if __name__ == "__main__":
    main()
