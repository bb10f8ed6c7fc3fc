"""Benchmarks (never part of the test suite): ``python -m sem_dist.bench NAME [--quick] --json``."""
