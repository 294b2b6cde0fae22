"""Hydra entry point (the ``tensam-train`` console script); see src/tensam/train.py.

This clone's ``src`` goes first on the path, so ``python train.py`` runs this clone's code and
configs even where another clone of tensam is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from tensam.train import main  # noqa: E402

if __name__ == "__main__":
    main()
