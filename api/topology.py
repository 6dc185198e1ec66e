"""The grid topology kept by the service, in the scenario file's shape (nodes, stations)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Connector, Station, TopologyNode
from optimizer.scenario import SCENARIO_FORMAT, parse_scenario


def read_topology(db: Session) -> dict[str, list[dict[str, Any]]]:
    """All nodes and stations (with their connectors), sorted by id."""
    nodes = [
        {
            k: v
            for k, v in {
                "id": n.id,
                "parent": n.parent,
                "limit_kw": n.limit_kw,
                "limit_a": n.limit_a,
            }.items()
            if v is not None or k == "parent"
        }
        for n in db.scalars(select(TopologyNode).order_by(TopologyNode.id))
    ]
    conns: dict[str, list[dict[str, Any]]] = {}
    for c in db.scalars(select(Connector).order_by(Connector.station_id, Connector.position)):
        conns.setdefault(c.station_id, []).append(
            {"id": c.id, "limit_a": c.limit_a, "phases": c.phases, "phase": c.phase}
        )
    stations = [
        {
            "id": s.id,
            "node": s.node,
            "limit_a": s.limit_a,
            "min_current_a": s.min_current_a,
            "connectors": conns.get(s.id, []),
        }
        for s in db.scalars(select(Station).order_by(Station.id))
    ]
    return {"nodes": nodes, "stations": stations}


def upsert_topology(db: Session, body: dict[str, Any]) -> dict[str, int]:
    """Insert or replace nodes and stations by id (idempotent); nothing is deleted.

    The merged topology is validated as a whole first (references, cycles, limits), so an
    invalid request stores nothing.

    Raises
    ------
    optimizer.errors.ScenarioError
        Naming the offending field of the request.
    """
    for key in body:
        if key not in ("nodes", "stations"):
            from optimizer.errors import ScenarioError

            raise ScenarioError(key, "...", "unknown field (expected nodes, stations)")
    current = read_topology(db)
    nodes = {n["id"]: n for n in current["nodes"]}
    stations = {s["id"]: s for s in current["stations"]}
    new_nodes = body.get("nodes", [])
    new_stations = body.get("stations", [])
    # validate the request alone first, so messages point at its own fields
    parse_scenario(
        {
            "format": SCENARIO_FORMAT,
            "grid": _DUMMY_GRID,
            "nodes": _with_known(new_nodes, nodes, new_stations),
            "stations": new_stations,
        }
    )
    for n in new_nodes:
        nodes[n["id"]] = n
    for s in new_stations:
        stations[s["id"]] = s
    merged = parse_scenario(
        {
            "format": SCENARIO_FORMAT,
            "grid": _DUMMY_GRID,
            "nodes": list(nodes.values()),
            "stations": list(stations.values()),
        }
    )
    by_id = {s.id: s for s in merged.stations}
    for n in merged.nodes:
        if n.id in {x["id"] for x in new_nodes}:
            db.merge(TopologyNode(id=n.id, parent=n.parent, limit_kw=n.limit_kw, limit_a=n.limit_a))
    for sid in (s["id"] for s in new_stations):
        st = by_id[sid]
        db.merge(
            Station(id=st.id, node=st.node, limit_a=st.limit_a, min_current_a=st.min_current_a)
        )
        for pos, c in enumerate(st.connector_list(), start=1):
            db.merge(
                Connector(
                    id=c.id,
                    station_id=st.id,
                    position=pos,
                    limit_a=c.limit_a,
                    phases=c.phases,
                    phase=c.phase,
                )
            )
    return {"nodes": len(new_nodes), "stations": len(new_stations)}


_DUMMY_GRID = {"start": "2026-01-01T00:00:00+00:00", "step_s": 900, "steps": 1}


def _with_known(
    new_nodes: list[dict[str, Any]],
    known: dict[str, dict[str, Any]],
    new_stations: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The request's nodes plus stored nodes it refers to, so references can be checked."""
    ids = {n.get("id") for n in new_nodes if isinstance(n, dict)}
    extra = [n for nid, n in known.items() if nid not in ids]
    return [*new_nodes, *extra]
