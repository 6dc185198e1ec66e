"""The per-session plan baseline (``plan_shifted``) on a hand case: a plan that changes inside
the activation, a car that draws less than its profile, a session that leaves, a session
without a plan, and one plugged in just before the signal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from measurement.io import load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import Plan, plan_shifted

T0 = datetime(2026, 11, 25, 16, 0, tzinfo=UTC).timestamp()
TS = T0 + 1800.0  # signal
TC = TS + 600.0  # clear
KW_PER_A = 3 * 230.0 / 1000.0  # 3 phases


def _states(sid: str, amps: Any, start: float = T0, end: float = T0 + 3600.0) -> list[dict]:
    """States every 5 minutes of a session drawing ``amps(t)`` [A] (piecewise constant on
    whole minutes), energy integrated exactly."""
    rows, e, t = [], 0.0, start
    grid = np.arange(start, end + 1, 60.0)
    for k, t in enumerate(grid):
        if (k and k % 5 == 0) or k == 0 or t == grid[-1]:
            i = amps(t)
            rows.append(
                {
                    "session_id": sid,
                    "timestamp": datetime.fromtimestamp(t, UTC).isoformat(),
                    "kwh": round(e, 6),
                    "current_l1_a": i,
                    "current_l2_a": i,
                    "current_l3_a": i,
                    "min_current_a": 8,
                }
            )
        e += amps(t) * KW_PER_A / 60.0
    return rows


def curtailed(before: float) -> Any:
    return lambda t: 8.0 if TS <= t < TC else before


def test_plan_baseline_hand_case() -> None:
    states = (
        _states("a", curtailed(16.0))  # plan 16 A, 10 A from TS + 5 min
        + _states("b", curtailed(10.0))  # car takes 10 A of the 16 A plan
        + _states("c", curtailed(16.0), end=TS + 300.0)  # leaves 5 minutes into it
        + _states("d", curtailed(12.0))  # no plan: held at its power before the signal
        + _states("e", lambda t: 16.0, start=TS - 30.0)  # plugged in 30 s before: follows plan
    )
    rec = reconstruct(load_states(states), np.array([TS, TC]))
    edges = T0 + 300.0 * np.arange(13)
    lim = np.full((4, 12), 16.0)
    lim[0, (edges[:-1] >= TS + 300.0)] = 10.0
    plan = Plan(np.array(["a", "b", "c", "e"], dtype=object), edges, lim)
    got = plan_shifted(rec, TS, TC, plan)
    p16, p10, p8, p12 = 16 * KW_PER_A, 10 * KW_PER_A, 8 * KW_PER_A, 12 * KW_PER_A
    base = {
        "a": p16 * 5 / 60 + p10 * 5 / 60,
        "b": p10 * 10 / 60,  # the car, not the plan, limits it
        "c": p16 * 5 / 60,  # nothing after it left
        "d": p12 * 10 / 60,
        "e": p16 * 10 / 60,
    }
    delivered = {"a": p8 / 6, "b": p8 / 6, "c": p8 * 5 / 60, "d": p8 / 6, "e": p16 / 6}
    assert got.sessions == 5 and got.without_plan == 1
    assert got.baseline_kwh == pytest.approx(sum(base.values()), abs=2e-3)
    assert got.delivered_kwh == pytest.approx(sum(delivered.values()), abs=2e-3)
    assert got.shifted_kwh == pytest.approx(sum(base.values()) - sum(delivered.values()), abs=3e-3)
    # restricted to the sessions an activation curtailed
    pos = {s: k for k, s in enumerate(rec.session_ids)}
    only_a = plan_shifted(rec, TS, TC, plan, sessions=np.array([pos["a"]]))
    assert only_a.shifted_kwh == pytest.approx(base["a"] - delivered["a"], abs=1e-3)


def test_full_car_cannot_take_more_than_it_took() -> None:
    """A car that fills up during the activation (energy flat from then on while its plan
    still gives current) gets no more than it took by the horizon."""

    def amps(t: float) -> float:
        if t >= TS + 360.0:
            return 0.0  # full
        return 8.0 if t >= TS else 16.0

    rec = reconstruct(load_states(_states("f", amps)), np.array([TS, TC]))
    plan = Plan(np.array(["f"], dtype=object), T0 + 300.0 * np.arange(13), np.full((1, 12), 16.0))
    got = plan_shifted(rec, TS, TC, plan)
    p8 = 8 * KW_PER_A
    assert got.delivered_kwh == pytest.approx(p8 * 6 / 60, abs=2e-3)
    assert got.baseline_kwh == pytest.approx(got.delivered_kwh, abs=2e-3)
    assert got.shifted_kwh == pytest.approx(0.0, abs=2e-3)
