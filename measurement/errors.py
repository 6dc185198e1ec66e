"""Typed errors of the measurement package; each message names the field and the value.

The command line maps them to exit code 2, the service to HTTP 422.
"""

from __future__ import annotations

from optimizer.errors import FieldError


class MeasurementError(FieldError):
    """Input that cannot be measured as written (``field`` e.g. ``states[12].timestamp``)."""


class MissingColumn(MeasurementError):
    """A required column is absent from a table."""


class NaiveTimestamp(MeasurementError):
    """A timestamp without UTC offset, or one that is not a date-time at all."""


class NegativeEnergy(MeasurementError):
    """A cumulative energy, meter energy or current below zero."""


class BadActivation(MeasurementError):
    """An activation whose times are missing or out of order."""
