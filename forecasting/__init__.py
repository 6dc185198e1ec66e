"""Departure-time and energy-need forecasting: loaders, leakage-free features, scikit-learn
models with baselines, time-ordered evaluation and skops model files."""
