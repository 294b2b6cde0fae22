"""Table 3 (fine-tuning a TT-compressed network) from run directories, the paper's beside ours.

Command-line wrapper of ``tensam.reports.table3`` (``python -m`` runs it too)."""

from tensam.reports.table3 import main

if __name__ == "__main__":
    main()
