"""Table 2 (CIFAR-10 with symmetric label noise) from run directories, the paper's column beside.

Command-line wrapper of ``tensam.reports.table2`` (``python -m`` runs it too)."""

from tensam.reports.table2 import main

if __name__ == "__main__":
    main()
