"""Every optimizer on the paper's tasks, plus overhead and memory -> results/optimizers.{md,csv}.

Command-line wrapper of ``tensam.analysis.optimizers`` (``python -m`` runs it too)."""

from tensam.analysis.optimizers import main

if __name__ == "__main__":
    main()
