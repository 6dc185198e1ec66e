"""Forecasting benchmark: the departure model against both baselines on every shared dataset,
on time-ordered splits, and what the scheduler gains from it in a simulated day. Writes
``docs/FORECASTING.md``'s results section (older runs are kept) and ``docs/benchmarks.json``.

Usage: ``python -m benchmarks.forecasting [--data ../shared/data] [--folds 3] [--stations 150]``.
The shared datasets are read from ``../shared/data`` (absent on a fresh clone: then only the
shipped slice ``tests/forecasting/data/workplace_slice.csv`` is evaluated).
"""
