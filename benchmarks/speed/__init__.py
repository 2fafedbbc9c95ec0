"""How fast: training, grounding, scoring and preparing (benchmarks/README.md)."""
