"""The norm-dynamics theorems as measurements (float64), on Tucker-2 denoising.

Command-line wrapper of ``tensam.analysis.theory`` (``python -m`` runs it too)."""

from tensam.analysis.theory import main

if __name__ == "__main__":
    main()
