"""Per-step time and memory of Adam, SAM and DAS on tensor adapters (Table 6's comparison).

Command-line wrapper of ``tensam.bench.peft`` (``python -m`` runs it too)."""

from tensam.bench.peft import main

if __name__ == "__main__":
    main()
