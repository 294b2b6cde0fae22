"""Figure 1: Norm Deviation Q and Cov(||G_k||^2, ||g_k||^2) vs iterations on Tucker-2 denoising.

Command-line wrapper of ``tensam.reports.fig1`` (``python -m`` runs it too)."""

from tensam.reports.fig1 import main

if __name__ == "__main__":
    main()
