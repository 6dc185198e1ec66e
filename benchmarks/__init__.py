"""Scale, speed and quality benchmarks; `python -m benchmarks.run` writes docs/BENCHMARKS.md."""
