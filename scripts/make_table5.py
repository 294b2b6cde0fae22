"""Table 5 (LoRETTA with Adam, SAM and DAS on OPT-6.7B, SuperGLUE and generation) from run

Command-line wrapper of ``tensam.reports.table5`` (``python -m`` runs it too)."""

from tensam.reports.table5 import main

if __name__ == "__main__":
    main()
