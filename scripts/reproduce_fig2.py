"""Figure 2: train loss and R2 along a fixed random direction, Adam vs SAM vs DAS (COVID Tucker).

Command-line wrapper of ``tensam.reports.fig2`` (``python -m`` runs it too)."""

from tensam.reports.fig2 import main

if __name__ == "__main__":
    main()
