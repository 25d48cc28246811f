"""Benchmarks and the soak test: loopback only, bounded in count and time."""
