"""Norm dynamics on a real network: Q_l and Cov_l per tensorized layer of TR-ResNet-20 under SGD,

Command-line wrapper of ``tensam.reports.normdyn`` (``python -m`` runs it too)."""

from tensam.reports.normdyn import main

if __name__ == "__main__":
    main()
