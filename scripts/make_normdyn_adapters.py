"""The norm dynamics of tensor adapters under Adam, SAM and DAS: Q and Cov_l per adapter layer.

Command-line wrapper of ``tensam.reports.normdyn_adapters`` (``python -m`` runs it too)."""

from tensam.reports.normdyn_adapters import main

if __name__ == "__main__":
    main()
