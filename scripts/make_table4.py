"""Table 4's comparison (tensor adapters with Adam, SAM and DAS on few-shot GLUE) from run

Command-line wrapper of ``tensam.reports.table4`` (``python -m`` runs it too)."""

from tensam.reports.table4 import main

if __name__ == "__main__":
    main()
