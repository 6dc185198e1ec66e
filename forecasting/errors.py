"""Typed errors of the forecasting package. Each message names the offending field and value.

The command line maps them to exit code 2, the service to HTTP 4xx.
"""

from __future__ import annotations

from optimizer.errors import FieldError, GridchargeError


class ForecastDataError(FieldError):
    """A training or prediction file that cannot be used as written.

    ``field`` names the column or field, with its row where one is at fault, e.g.
    ``row 12 (session s-12).departure``; a missing field has the value ``None``, not shown.
    """

    show_missing = False


class ModelFileError(GridchargeError, ValueError):
    """A model file or directory that is missing, corrupt, tampered with or holds untrusted
    types; it is never loaded."""
