"""Datasets: in-memory arrays, bundled digits, and (data layer) sources and sinks on any fsspec URI."""
