"""Figure 3 (accuracy gain of SAM and DAS over SGD on CP-/TR-ResNet-20, CIFAR-10) from runs.

Command-line wrapper of ``tensam.reports.fig3`` (``python -m`` runs it too)."""

from tensam.reports.fig3 import main

if __name__ == "__main__":
    main()
