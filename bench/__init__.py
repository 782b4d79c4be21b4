"""Benchmarks of the worker: throughput, admission latency, overspend, budget usability,
scaling and added latency. ``python -m bench`` runs them all; see ``BENCHMARKS.md``."""
