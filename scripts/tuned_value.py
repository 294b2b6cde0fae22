"""The tuned value of a hyperparameter, read from the runs of its tuning sweep.

Command-line wrapper of ``tensam.reports.tuned`` (``python -m`` runs it too)."""

from tensam.reports.tuned import main

if __name__ == "__main__":
    main()
