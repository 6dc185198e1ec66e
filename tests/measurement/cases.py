"""Hand-computed measurement cases shared by the tests.

Two 3-phase sessions on one station charge at 16 A (11.04 kW) from ``T0``; states every
5 minutes at ``T0 + 2 min + 5k min``. An activation from ``T0 + 20 min`` to ``T0 + 30 min``:
session ``a`` drops to 8 A (5.52 kW) and comes back, session ``b`` ignores it.

- delivered: a 5.52 · 10/60 = 0.92 kWh, b 11.04 · 10/60 = 1.84 kWh, together 2.76 kWh;
- baseline: P(t_s) = P(t_c) = 22.08 kW → 22.08 · 10/60 = 3.68 kWh; shifted 0.92 kWh;
- theoretical minimum 2 · 5.52 · 10/60 = 1.84 kWh; performance ratio 0.92 / (3.68 − 1.84) = 0.5;
- value at 400 EUR/MWh: 0.368 EUR.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
V = 230.0
P16 = 16 * 3 * V / 1000  # 11.04 kW
P8 = 8 * 3 * V / 1000  # 5.52 kW
T_SIGNAL = T0 + timedelta(minutes=20)
T_CLEAR = T0 + timedelta(minutes=30)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def power_a(minute: float, follows: bool) -> float:
    """Current of the hand case [A] at ``minute`` after T0."""
    return 8.0 if follows and 20 <= minute < 30 else 16.0


def energy(minute: float, follows: bool) -> float:
    """Cumulative energy [kWh] at ``minute`` after T0."""
    if not follows or minute <= 20:
        return P16 * minute / 60
    if minute <= 30:
        return P16 * 20 / 60 + P8 * (minute - 20) / 60
    return P16 * 20 / 60 + P8 * 10 / 60 + P16 * (minute - 30) / 60


def states(minutes: tuple[float, ...] | None = None, **extra: Any) -> list[dict[str, Any]]:
    """State records of both sessions (``a`` follows, ``b`` ignores)."""
    ticks = minutes if minutes is not None else tuple(2 + 5 * k for k in range(12))
    out = []
    for sid, follows in (("a", True), ("b", False)):
        for m in ticks:
            i = power_a(m, follows)
            out.append(
                {
                    "session_id": sid,
                    "timestamp": iso(T0 + timedelta(minutes=m)),
                    "kwh": round(energy(m, follows), 6),
                    "current_l1_a": i,
                    "current_l2_a": i,
                    "current_l3_a": i,
                    "station": "st-1",
                    "subcluster": "sc-1",
                    "region": "region-01",
                    "min_current_a": 8.0,
                    **extra,
                }
            )
    return out


def activation(**extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": "act-1",
            "t_signal": iso(T_SIGNAL),
            "t_clear": iso(T_CLEAR),
            "region": "region-01",
            "price_eur_per_mwh": 400.0,
            **extra,
        }
    ]
