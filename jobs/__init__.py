"""Offline work over video archives: `jobs.index` (the Ray Data indexing job), `jobs.eval`
(benchmarks and sweeps) and `jobs.visualize` (what the compression kept, drawn)."""
