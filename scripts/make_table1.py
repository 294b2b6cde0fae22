"""Table 1: aggregate the runs of ``make reproduce-table1`` into ``results/table1.{md,csv}``.

Command-line wrapper of ``tensam.reports.table1`` (``python -m`` runs it too)."""

from tensam.reports.table1 import main

if __name__ == "__main__":
    main()
