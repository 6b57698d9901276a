"""Benchmarks of the pipeline and the dashboard's history reads.

Run each from the repository root as `python -m bench.NAME [--quick] [options]`; each prints a
table and writes `bench/results/NAME.json`. Shared plumbing is in `bench.common`.
"""
