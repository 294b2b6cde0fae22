"""Table 1's diagnostics (not training runs) -> ``<root>/diagnostics/*.json`` for make_table1.py.

Command-line wrapper of ``tensam.analysis.table1_diagnostics`` (``python -m`` runs it too)."""

from tensam.analysis.table1_diagnostics import main

if __name__ == "__main__":
    main()
