"""The scenario file (``gridcharge.scenario/1``): parsing and validation.

Parsing is done with pydantic (types, defaults, ranges); the checks that span several objects
(references, cycles, overlaps, list lengths) follow in :func:`validate_scenario`. Every refusal is
a :class:`~optimizer.errors.ScenarioError` whose message names the field and the value.
See ``docs/formats.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from optimizer.errors import (
    BadLength,
    BadTime,
    DuplicateId,
    NodeCycle,
    OverlappingSessions,
    ScenarioError,
    UnknownReference,
)

SCENARIO_FORMAT = "gridcharge.scenario/1"
DEFAULT_STAY_H = 4.0
"""Assumed stay [h] of a session without departure (just under ElaadNL's public median 4.4 h)."""

Limit = float | list[float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Grid(_Model):
    """The time grid: ``steps`` intervals of ``step_s`` seconds from ``start``."""

    start: AwareDatetime
    step_s: int = Field(gt=0, le=86_400)
    steps: int = Field(gt=0, le=100_000)

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def dt_h(self) -> float:
        return self.step_s / 3600.0

    def instant(self, t: int) -> datetime:
        """UTC start of interval ``t``."""
        return self.start_utc + timedelta(seconds=t * self.step_s)


class Node(_Model):
    id: str = Field(min_length=1)
    parent: str | None = None
    limit_kw: Limit | None = None
    limit_a: Limit | None = None


class Connector(_Model):
    id: str = Field(min_length=1)
    limit_a: float = Field(default=16.0, gt=0)
    phases: Literal[1, 3] = 3
    phase: Literal["L1", "L2", "L3"] = "L1"


class Station(_Model):
    id: str = Field(min_length=1)
    node: str
    limit_a: Limit = 25.0
    min_current_a: float = Field(default=8.0, ge=6.0, le=32.0)
    connectors: list[Connector] | None = None

    def connector_list(self) -> list[Connector]:
        """The connectors, or the two default ones ``{id}-1`` and ``{id}-2``."""
        if self.connectors is not None:
            return self.connectors
        return [Connector(id=f"{self.id}-1"), Connector(id=f"{self.id}-2")]


class Session(_Model):
    id: str = Field(min_length=1)
    connector: str
    arrival: AwareDatetime
    departure: AwareDatetime | None = None
    energy_kwh: float | None = Field(default=None, ge=0)
    phases: Literal[1, 3] = 3
    opt_out: bool = False
    pause_consent: bool = False
    limit_a: Limit | None = None
    """Optional cap on this session's current [A] per phase, one value or one per step (e.g.
    a demand-response curtailment); never below its station's ``min_current_a``."""

    @property
    def departure_or_default(self) -> datetime:
        if self.departure is not None:
            return self.departure
        return self.arrival + timedelta(hours=DEFAULT_STAY_H)


class DsoProfile(_Model):
    node: str
    cap_kw: list[float] | None = None
    target_kw: list[float] | None = None


class Scenario(_Model):
    format: Literal["gridcharge.scenario/1"]
    grid: Grid
    voltage_v: float = Field(default=230.0, gt=0)
    nodes: list[Node] = Field(default_factory=list)
    stations: list[Station] = Field(default_factory=list)
    sessions: list[Session] = Field(default_factory=list)
    dso_profiles: list[DsoProfile] = Field(default_factory=list)
    prices_eur_per_mwh: list[float] | None = None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"float", "list[float]", "int", "str", "bool"} or "[" in str(part):
            continue  # pydantic's union-branch labels
        else:
            out += f".{part}" if out else str(part)
    return out or "scenario"


def _from_validation_error(exc: ValidationError) -> ScenarioError:
    err = exc.errors()[0]
    field = _loc(tuple(err["loc"]))
    value = err.get("input")
    if isinstance(value, Mapping):
        value = "{...}"
    cls = BadTime if "timezone" in err["msg"] or "datetime" in err["type"] else ScenarioError
    return cls(field, value, err["msg"][0].lower() + err["msg"][1:])


def parse_scenario(data: Mapping[str, Any]) -> Scenario:
    """Parse and validate a scenario given as a JSON-like mapping.

    Raises
    ------
    ScenarioError
        With the first offending field and its value.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError("scenario", type(data).__name__, "must be a JSON object")
    if data.get("format") != SCENARIO_FORMAT:
        raise ScenarioError("format", data.get("format"), f"must be {SCENARIO_FORMAT!r}")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    validate_scenario(scenario)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file; malformed JSON is a :class:`ScenarioError` too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("file", str(p), f"cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            "file", str(p), f"is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    return parse_scenario(data)


def _check_unique(kind: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for k, i in enumerate(ids):
        if i in seen:
            raise DuplicateId(f"{kind}[{k}].id", i, f"duplicate {kind[:-1]} id")
        seen.add(i)


def _check_limit(field: str, value: Limit | None, steps: int) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) != steps:
        raise BadLength(field, f"list of {len(value)}", f"must have one value per step ({steps})")
    for v in values:
        if not v >= 0:  # also catches NaN
            raise ScenarioError(field, v, "must be >= 0")


def validate_scenario(sc: Scenario) -> None:
    """Cross-object checks: references, uniqueness, cycles, overlaps, list lengths.

    Raises
    ------
    ScenarioError
        Naming the first offending field and value.
    """
    steps = sc.grid.steps
    _check_unique("nodes", [n.id for n in sc.nodes])
    _check_unique("stations", [s.id for s in sc.stations])
    _check_unique("sessions", [s.id for s in sc.sessions])

    node_ids = {n.id for n in sc.nodes}
    parent = {n.id: n.parent for n in sc.nodes}
    for k, n in enumerate(sc.nodes):
        if n.parent is not None and n.parent not in node_ids:
            raise UnknownReference(f"nodes[{k}].parent", n.parent, "unknown node")
        _check_limit(f"nodes[{k}].limit_kw", n.limit_kw, steps)
        _check_limit(f"nodes[{k}].limit_a", n.limit_a, steps)
    for k, n in enumerate(sc.nodes):
        seen = {n.id}
        up = n.parent
        while up is not None:
            if up in seen:
                raise NodeCycle(f"nodes[{k}].parent", n.parent, f"node cycle through {n.id!r}")
            seen.add(up)
            up = parent[up]

    connectors: dict[str, Connector] = {}
    station_min: dict[str, float] = {}
    for k, st in enumerate(sc.stations):
        if st.node not in node_ids:
            raise UnknownReference(f"stations[{k}].node", st.node, "unknown node")
        _check_limit(f"stations[{k}].limit_a", st.limit_a, steps)
        for j, c in enumerate(st.connector_list()):
            if c.id in connectors:
                raise DuplicateId(
                    f"stations[{k}].connectors[{j}].id", c.id, "duplicate connector id"
                )
            if st.min_current_a > c.limit_a:
                raise ScenarioError(
                    f"stations[{k}].min_current_a",
                    st.min_current_a,
                    f"exceeds connector {c.id!r} limit_a {c.limit_a}",
                )
            connectors[c.id] = c
            station_min[c.id] = st.min_current_a

    by_connector: dict[str, list[tuple[datetime, datetime, int]]] = {}
    for k, s in enumerate(sc.sessions):
        if s.connector not in connectors:
            raise UnknownReference(f"sessions[{k}].connector", s.connector, "unknown connector")
        if s.departure is not None and s.departure <= s.arrival:
            raise BadTime(
                f"sessions[{k}].departure", s.departure.isoformat(), "must be after arrival"
            )
        if s.pause_consent and s.opt_out:
            raise ScenarioError(
                f"sessions[{k}].pause_consent", True, "an opt_out session cannot be paused"
            )
        _check_limit(f"sessions[{k}].limit_a", s.limit_a, steps)
        if s.limit_a is not None:
            floor_a = station_min[s.connector]
            low = min(s.limit_a) if isinstance(s.limit_a, list) else s.limit_a
            if low < floor_a - 1e-9:
                raise ScenarioError(
                    f"sessions[{k}].limit_a",
                    low,
                    f"is below the station minimum current {floor_a} A (that would pause the car)",
                )
        by_connector.setdefault(s.connector, []).append((s.arrival, s.departure_or_default, k))
    for cid, spans in by_connector.items():
        spans.sort()
        for (_, dep0, k0), (arr1, _, k1) in pairwise(spans):
            if arr1 < dep0:
                raise OverlappingSessions(
                    f"sessions[{k1}].arrival",
                    arr1.isoformat(),
                    f"overlaps session {sc.sessions[k0].id!r} on connector {cid!r}",
                )

    for k, prof in enumerate(sc.dso_profiles):
        if prof.node not in node_ids:
            raise UnknownReference(f"dso_profiles[{k}].node", prof.node, "unknown node")
        if prof.cap_kw is None and prof.target_kw is None:
            raise ScenarioError(f"dso_profiles[{k}]", prof.node, "needs cap_kw or target_kw")
        _check_limit(f"dso_profiles[{k}].cap_kw", prof.cap_kw, steps)
        _check_limit(f"dso_profiles[{k}].target_kw", prof.target_kw, steps)
    if sc.prices_eur_per_mwh is not None and len(sc.prices_eur_per_mwh) != steps:
        raise BadLength(
            "prices_eur_per_mwh",
            f"list of {len(sc.prices_eur_per_mwh)}",
            f"must have one value per step ({steps})",
        )


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of the scenario file, generated from the pydantic models."""
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://gridcharge.org/schemas/scenario-1.json"
    return schema
