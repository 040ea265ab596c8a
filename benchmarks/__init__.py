"""Throughput and memory benchmarks (scripts that print tables; see README.md)."""
