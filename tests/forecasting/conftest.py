"""Generated sessions for the forecasting tests: commuters with a departure habit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

SLICE = Path(__file__).parent / "data" / "workplace_slice.csv"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
HEADER = "session_id,user_id,station_id,arrival,departure,energy_kwh\n"


def commuter_csv(days: int = 40, users: int = 15, seed: int = 1) -> str:
    """Generic-CSV text: each user arrives 07:30–09:00 (+01:00) on weekdays and leaves at their
    own habit (13:00 + 20 min × user ± 15 min); a few visitors stay about 1.5 h."""
    rng = np.random.default_rng(seed)
    lines = [HEADER]
    day0 = datetime(2026, 1, 5, tzinfo=UTC)
    n = 0
    for d in range(days):
        day = day0 + timedelta(days=d)
        if day.weekday() >= 5:
            continue
        for u in range(users):
            if rng.random() < 0.2:
                continue
            a = day + timedelta(hours=6.5 + rng.uniform(0, 1.5))
            leave = day + timedelta(hours=12 + u / 3 + rng.normal(0, 0.25))
            kwh = round(2.5 * (leave - a).total_seconds() / 3600 + rng.normal(0, 1), 2)
            lines.append(f"s{n},user-{u},st-{u % 4},{_t(a)},{_t(leave)},{max(kwh, 0.5)}\n")
            n += 1
        for _ in range(2):
            a = day + timedelta(hours=rng.uniform(9, 15))
            leave = a + timedelta(hours=max(rng.normal(1.5, 0.4), 0.2))
            lines.append(f"s{n},,st-{n % 4},{_t(a)},{_t(leave)},5.0\n")
            n += 1
    return "".join(lines)


def _t(t: datetime) -> str:
    return (t + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+01:00")


@pytest.fixture
def commuters_path(tmp_path: Path) -> Path:
    p = tmp_path / "sessions.csv"
    p.write_text(commuter_csv(), encoding="utf-8")
    return p


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """One OpenMP thread for the boosters: on a shared machine, spinning threads cost more
    than they give on these small sets."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
