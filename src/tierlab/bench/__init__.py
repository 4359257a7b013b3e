"""Benchmarks a user runs on their own model and machine (``tierlab bench``)."""

from .precision import BENCH_PRECISIONS, BenchResult, BenchRow, bench_precision

__all__ = ["BENCH_PRECISIONS", "BenchResult", "BenchRow", "bench_precision"]
