"""Topology: bulk idempotent upsert of regions, subclusters, stations and connectors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from api.db import transaction
from api.deps import DbDep, require
from api.security import Principal
from api.topology import read_topology, upsert_topology
from optimizer.errors import ScenarioError

router = APIRouter(prefix="/v1", tags=["topology"])

EXAMPLE = {
    "nodes": [
        {"id": "region-01", "parent": None},
        {"id": "region-01/sc-001", "parent": "region-01", "limit_kw": 250},
    ],
    "stations": [
        {
            "id": "st-00001",
            "node": "region-01/sc-001",
            "limit_a": 25,
            "min_current_a": 8,
            "connectors": [
                {"id": "st-00001-1", "limit_a": 16, "phases": 3},
                {"id": "st-00001-2", "limit_a": 16, "phases": 3},
            ],
        }
    ],
}


@router.put("/topology", summary="Insert or replace nodes and stations (idempotent)")
def put_topology(
    request: Request,
    principal: Annotated[Principal, Depends(require("operator"))],
    body: Annotated[dict[str, Any], Body(examples=[EXAMPLE])],
) -> dict[str, Any]:
    try:
        with transaction(request.app.state.sessionmaker) as db:
            counts = upsert_topology(db, body)
    except ScenarioError as exc:
        raise HTTPException(422, str(exc)) from None
    request.app.state.events.notify("topology")
    return {"upserted": counts}


@router.get("/topology", summary="The whole topology, in the scenario file's shape")
def get_topology(
    db: DbDep,
    principal: Annotated[Principal, Depends(require("operator", "csms", "dso", "data-scientist"))],
) -> dict[str, Any]:
    return read_topology(db)
