"""Benchmarks: step time and memory of the methods, measured interleaved in one process
(``optim``, ``vision``, ``peft``), each writing ``results/bench_<name>.md`` and its JSON."""
