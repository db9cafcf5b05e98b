"""Child processes: the benchmark worker, the deep-check probe; their protocol."""
