"""Hydra entry point (same as the ``tensam-train`` console script); see src/tensam/train.py."""

from tensam.train import main

if __name__ == "__main__":
    main()
