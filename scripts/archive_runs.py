"""Keep the records of a study's runs with the results (summaries and metrics, no checkpoints).

Command-line wrapper of ``tensam.reports.archive`` (``python -m`` runs it too)."""

from tensam.reports.archive import main

if __name__ == "__main__":
    main()
