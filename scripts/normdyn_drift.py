"""DAS's normalisation on a real network, and Theorem 5's sign, from one-step drifts in float64.

Command-line wrapper of ``tensam.analysis.drift`` (``python -m`` runs it too)."""

from tensam.analysis.drift import main

if __name__ == "__main__":
    main()
