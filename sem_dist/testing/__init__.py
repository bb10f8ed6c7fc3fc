"""Helpers shared by the test suite and the benchmarks (real servers on loopback, no mocks)."""
