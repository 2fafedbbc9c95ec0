"""Running benchmarks on a lent GPU machine (benchmarks/README.md)."""
