"""Does the fast CPU path change the science? fp32 vs bf16 autocast + channels_last, paired.

Command-line wrapper of ``tensam.reports.fastpath`` (``python -m`` runs it too)."""

from tensam.reports.fastpath import main

if __name__ == "__main__":
    main()
