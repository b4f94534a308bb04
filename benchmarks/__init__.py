"""Benchmarks: scripts that measure the service on a real cluster and write RESULTS.md; never run by pytest."""
