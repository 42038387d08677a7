"""Benchmarks: load generator, review mix, in-process microbenchmark, ours-vs-upstream run and
the ServiceAccount cache at scale. See bench/README.md."""
