"""Typed errors of the measurement package; each message names the field and the value.

The command line maps them to exit code 2, the service to HTTP 422.
"""

from __future__ import annotations

from optimizer.errors import GridchargeError


class MeasurementError(GridchargeError, ValueError):
    """Input that cannot be measured as written.

    Parameters
    ----------
    field : str
        Offending field, e.g. ``states[12].timestamp``.
    value : object
        The offending value.
    reason : str
        What is wrong with it.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        if hasattr(value, "item") and callable(value.item):  # numpy scalar
            value = value.item()
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {reason} (got {shown})")


class MissingColumn(MeasurementError):
    """A required column is absent from a table."""


class NaiveTimestamp(MeasurementError):
    """A timestamp without UTC offset, or one that is not a date-time at all."""


class NegativeEnergy(MeasurementError):
    """A cumulative energy, meter energy or current below zero."""


class BadActivation(MeasurementError):
    """An activation whose times are missing or out of order."""
