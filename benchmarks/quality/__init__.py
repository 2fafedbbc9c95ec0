"""How well: which settings ground, and what bf16 changes (benchmarks/README.md)."""
