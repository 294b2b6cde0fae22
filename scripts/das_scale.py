"""How large DAS's scaling is next to its base optimizer's step, core by core.

Command-line wrapper of ``tensam.analysis.das_scale`` (``python -m`` runs it too)."""

from tensam.analysis.das_scale import main

if __name__ == "__main__":
    main()
