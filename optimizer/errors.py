"""Typed errors of the optimiser. Each message names the offending field and value.

The command line maps :class:`ScenarioError` to exit code 2, the service to HTTP 422.
"""

from __future__ import annotations


class GridchargeError(Exception):
    """Base class of every error gridcharge raises on purpose."""


class ScenarioError(GridchargeError, ValueError):
    """A scenario that cannot be scheduled as written.

    Parameters
    ----------
    field : str
        Path of the offending field, e.g. ``sessions[3].energy_kwh``.
    value : object
        The offending value.
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
        super().__init__(f"{field}: {reason} (got {shown})")


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
