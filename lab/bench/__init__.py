"""Benchmarks: each is one command that writes JSON (numbers live there, not in unit tests)."""
