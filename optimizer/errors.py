"""Typed errors of the optimiser. Each message names the offending field and value.

The command line maps :class:`ScenarioError` to exit code 2, the service to HTTP 422.
"""

from __future__ import annotations


class GridchargeError(Exception):
    """Base class of every error gridcharge raises on purpose."""


class FieldError(GridchargeError, ValueError):
    """Input with one offending field; the message is ``field: reason (got value)``.

    Parameters
    ----------
    field : str
        Path of the offending field, e.g. ``sessions[3].energy_kwh``.
    value : object
        The offending value (a numpy scalar is shown as its Python value).
    reason : str
        What is wrong with it.
    """

    show_missing: bool = True
    """Whether a value of ``None`` is shown as ``(got None)``; False: nothing is shown."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "shape", None) == ():  # numpy scalar
            value = item()
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        got = "" if value is None and not self.show_missing else f" (got {shown})"
        super().__init__(f"{field}: {reason}{got}")


class ScenarioError(FieldError):
    """A scenario that cannot be scheduled as written."""


class UnknownReference(ScenarioError):
    """A field refers to a node, station or connector that does not exist."""


class DuplicateId(ScenarioError):
    """Two objects of one kind share an id."""


class NodeCycle(ScenarioError):
    """Following ``parent`` from a node leads back to the node."""


class OverlappingSessions(ScenarioError):
    """Two sessions occupy one connector at the same time."""


class BadTime(ScenarioError):
    """A time is malformed, lacks an offset, or is out of order."""


class BadLength(ScenarioError):
    """A per-step list does not have one value per grid step."""


class SolverError(GridchargeError):
    """The solver failed or returned no usable solution."""
