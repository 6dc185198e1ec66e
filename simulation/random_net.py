"""Small random scenarios with every feature switched on, for property tests and fuzzing.

Unlike :mod:`simulation.fleet` these are not realistic: they are built to reach corners (nested
subclusters with phase and power limits, per-step limits, 1-phase cars on every phase, opt-outs,
binding caps, targets, prices, sessions crossing the grid's edges).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np


def random_scenario(
    seed: int,
    *,
    stations: int = 4,
    steps: int = 12,
    step_s: int = 900,
    pause_consent: bool = False,
    opt_out: bool = True,
    prices: bool = True,
) -> dict[str, Any]:
    """A random scenario dict (``gridcharge.scenario/1``), deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    nodes: list[dict[str, Any]] = [{"id": "region", "parent": None}]
    n_sub = int(rng.integers(1, 3))
    for k in range(n_sub):
        node: dict[str, Any] = {"id": f"sub{k}", "parent": "region"}
        if rng.random() < 0.5:
            node["limit_kw"] = float(rng.uniform(15, 40))
        if rng.random() < 0.4:
            node["limit_a"] = [float(v) for v in rng.uniform(30, 60, steps)]
        nodes.append(node)
    if rng.random() < 0.5:
        nodes.append({"id": "deep", "parent": "sub0", "limit_kw": float(rng.uniform(10, 25))})
    node_ids = [n["id"] for n in nodes[1:]]
    station_list: list[dict[str, Any]] = []
    for k in range(stations):
        connectors = []
        for j in range(int(rng.integers(1, 4))):
            connectors.append(
                {
                    "id": f"st{k}-{j + 1}",
                    "limit_a": float(rng.choice([10.0, 16.0, 16.0, 32.0])),
                    "phases": int(rng.choice([1, 3, 3])),
                    "phase": str(rng.choice(["L1", "L2", "L3"])),
                }
            )
        station: dict[str, Any] = {
            "id": f"st{k}",
            "node": str(rng.choice(node_ids)),
            "min_current_a": float(rng.choice([6.0, 8.0])),
            "connectors": connectors,
        }
        station["limit_a"] = (
            [float(v) for v in rng.uniform(16, 32, steps)] if rng.random() < 0.3 else 25.0
        )
        station_list.append(station)
    sessions: list[dict[str, Any]] = []
    n_sess = 0
    for st in station_list:
        for c in st["connectors"]:
            t = float(rng.uniform(-2, steps * 0.6))
            while t < steps and rng.random() < 0.85:
                stay = float(rng.uniform(0.5, steps * 0.8))
                arr = start + timedelta(seconds=t * step_s)
                dep = start + timedelta(seconds=(t + stay) * step_s)
                sess: dict[str, Any] = {
                    "id": f"s{n_sess}",
                    "connector": c["id"],
                    "arrival": arr.isoformat(),
                    "departure": dep.isoformat(),
                    "phases": int(rng.choice([1, 3, 3])),
                }
                if rng.random() < 0.8:
                    sess["energy_kwh"] = round(float(rng.uniform(0, 30)), 3)
                if opt_out and rng.random() < 0.1:
                    sess["opt_out"] = True
                elif pause_consent and rng.random() < 0.3:
                    sess["pause_consent"] = True
                sessions.append(sess)
                n_sess += 1
                t += stay + float(rng.uniform(0, 3))
    scenario: dict[str, Any] = {
        "format": "gridcharge.scenario/1",
        "grid": {"start": start.isoformat(), "step_s": step_s, "steps": steps},
        "nodes": nodes,
        "stations": station_list,
        "sessions": sessions,
        "dso_profiles": [],
    }
    if rng.random() < 0.7:
        profile: dict[str, Any] = {"node": "region"}
        if rng.random() < 0.8:
            profile["cap_kw"] = [float(v) for v in rng.uniform(20, 90, steps)]
        if rng.random() < 0.5 or "cap_kw" not in profile:
            profile["target_kw"] = [float(v) for v in rng.uniform(0, 40, steps)]
        scenario["dso_profiles"].append(profile)
    if prices and rng.random() < 0.5:
        scenario["prices_eur_per_mwh"] = [float(v) for v in rng.uniform(-20, 300, steps)]
    return scenario


def random_regions(seed: int, *, regions: int = 3, **kwargs: Any) -> dict[str, Any]:
    """Several independent :func:`random_scenario` regions side by side in one scenario.

    Region ``k``'s ids carry the prefix ``r{k}.``; they share the grid and the prices (taken
    from region 0), nothing else, so the LP falls apart into one part per region.
    """
    out: dict[str, Any] | None = None
    for k in range(regions):
        one = random_scenario(seed * 1_000 + k, **kwargs)
        pre = f"r{k}."
        for node in one["nodes"]:
            node["id"] = pre + node["id"]
            if node.get("parent"):
                node["parent"] = pre + node["parent"]
        for st in one["stations"]:
            st["id"] = pre + st["id"]
            st["node"] = pre + st["node"]
            for c in st["connectors"]:
                c["id"] = pre + c["id"]
        for s in one["sessions"]:
            s["id"] = pre + s["id"]
            s["connector"] = pre + s["connector"]
        for prof in one["dso_profiles"]:
            prof["node"] = pre + prof["node"]
        if out is None:
            out = one
            continue
        for key in ("nodes", "stations", "sessions", "dso_profiles"):
            out[key].extend(one[key])
    assert out is not None
    return out
