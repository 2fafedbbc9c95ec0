"""Scoring answers: metrics (pure numpy), the benchmarks' protocols, breakdowns, baselines, tables, plots, predictions files."""
