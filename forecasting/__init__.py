"""Departure-time and energy-need forecasting (models, features, evaluation, registry)."""
