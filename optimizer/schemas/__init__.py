"""JSON Schemas of the scenario and schedule files (generated from pydantic models).

``python -m optimizer.schemas`` rewrites the shipped ``*.schema.json`` files; a test checks that
the shipped files match the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.scenario import scenario_json_schema

HERE = Path(__file__).parent


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class SolverInfo(_Open):
    name: str
    time_s: float | None = None
    objective: float | None = None
    gap: float | None = Field(default=None, description="Relative gap to the best bound.")


class GridOut(BaseModel):
    start: str = Field(description="UTC start, ISO-8601 with Z.")
    step_s: int
    steps: int


class SessionOut(BaseModel):
    current_a: list[float] = Field(description="Average current per phase per step [A].")
    energy_kwh: float
    unmet_kwh: float | None


class NodeOut(BaseModel):
    power_kw: list[float]


class ViolationOut(_Open):
    kind: str
    node: str | None = None
    session: str | None = None
    step: int | None
    amount: float
    unit: str


class ScheduleFile(BaseModel):
    """A schedule (``gridcharge.schedule/1``); see docs/formats.md."""

    format: Literal["gridcharge.schedule/1"]
    status: Literal["optimal", "feasible", "fallback", "infeasible_limits"]
    method: Literal["lp", "milp", "greedy", "uncontrolled"]
    solver: SolverInfo
    grid: GridOut
    sessions: dict[str, SessionOut]
    nodes: dict[str, NodeOut]
    violations: list[ViolationOut]
    kpis: dict[str, Any]
    profiles: dict[str, dict[str, Any]] | None = None
    reason: str | None = None


def schedule_json_schema() -> dict[str, Any]:
    """JSON Schema of the schedule file."""
    schema = ScheduleFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://gridcharge.org/schemas/schedule-1.json"
    return schema


def write_schemas() -> None:
    """Rewrite the shipped schema files from the models."""
    for name, schema in (
        ("scenario", scenario_json_schema()),
        ("schedule", schedule_json_schema()),
    ):
        (HERE / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    write_schemas()
