"""Reproducible speed, memory and FLOP benchmarks for cassr (``python -m benchmarks.run``).

Real-size architectures with random weights (no download), comparisons in one run, JSON + Markdown
results; see ``docs/benchmarks.md`` for what is measured, how, and the numbers.
"""
