"""Benchmarks behind ``scripts/bench_*.py``: each times our code against a peer measured in the
same run and prints ratios (never asserted in tests)."""
