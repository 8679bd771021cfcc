"""Benchmarks: processing, memory, SQLite, registration, capture, parallel processors and replay.

Run `python -m benchmarks --help` (or `make bench` / `make bench-quick`). Each target runs in its own
process, its methods interleaved over the repeats, and the runner prints medians, ratios and min-max,
then writes the results as JSON under `benchmarks/results/`.
"""
