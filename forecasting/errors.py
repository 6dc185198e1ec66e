"""Typed errors of the forecasting package. Each message names the offending field and value.

The command line maps them to exit code 2, the service to HTTP 4xx.
"""

from __future__ import annotations

from optimizer.errors import GridchargeError


class ForecastDataError(GridchargeError, ValueError):
    """A training or prediction file that cannot be used as written.

    Parameters
    ----------
    field : str
        The offending column or field, with its row where one is at fault, e.g.
        ``row 12 (session s-12).departure``.
    value : object
        The offending value (``None`` when the field is missing).
    reason : str
        What is wrong with it.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {reason}" + ("" if value is None else f" (got {shown})"))


class ModelFileError(GridchargeError, ValueError):
    """A model file or directory that is missing, corrupt, tampered with or holds untrusted
    types; it is never loaded."""
