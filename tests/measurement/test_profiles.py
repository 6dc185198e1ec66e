"""The ``--profiles`` input (``load_profiles``): rows of limits per session, or a gridcharge
schedule; every refusal names the row and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from measurement.errors import MeasurementError
from measurement.io import load_profiles

T = pd.Timestamp("2026-11-25T16:00:00Z").timestamp()


def test_rows_hold_until_the_next_row_or_their_end() -> None:
    plan = load_profiles(
        [
            {"session_id": "a", "start": "2026-11-25T16:00:00Z", "limit_a": 16},
            {"session_id": "a", "start": "2026-11-25T17:15:00+01:00", "limit_a": 10},
            {
                "session_id": "b",
                "start": "2026-11-25T16:05:00Z",
                "limit_a": 8,
                "end": "2026-11-25T16:10:00Z",
            },
        ]
    )
    ids = np.array(["a", "a", "a", "b", "b", "b", "c"], dtype=object)
    at = T + np.array([0, 899, 900, 299, 300, 600, 300], dtype=float)
    got = plan.limit_at(ids, at)
    assert got[:3].tolist() == [16.0, 16.0, 10.0]  # a: 16 A, then 10 A from 16:15 UTC
    assert np.isnan(got[3]) and got[4] == 8.0  # b from 16:05 ...
    assert np.isnan(got[5])  # ... until its end at 16:10
    assert np.isnan(got[6])  # no profile for c
    assert plan.limit_at(np.array(["a"], dtype=object), np.array([T + 20 * 3600.0]))[0] == 10.0


def test_a_gridcharge_schedule_is_a_plan(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(
        json.dumps(
            {
                "format": "gridcharge.schedule/1",
                "grid": {"start": "2026-11-25T16:00:00Z", "step_s": 900, "steps": 2},
                "sessions": {"a": {"current_a": [16.0, 8.0]}},
            }
        )
    )
    plan = load_profiles(path)
    got = plan.limit_at(np.array(["a"] * 3, dtype=object), T + np.array([0.0, 900.0, 1800.0]))
    assert got[:2].tolist() == [16.0, 8.0] and np.isnan(got[2])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"start": "2026-11-25T16:00:00"}, "profiles[1].start: needs a UTC offset"),
        ({"limit_a": -1}, "profiles[1].limit_a: must be >= 0"),
        ({"limit_a": "x"}, "profiles[1].limit_a: not a number"),
        ({"end": "2026-11-25T15:00:00Z"}, "profiles[1].end: must be after start"),
        ({"session_id": "a", "start": "2026-11-25T16:00:00Z"}, "profiles[1].start: duplicate"),
        ({"session_id": ""}, "profiles[1].session_id: must not be empty"),
    ],
)
def test_bad_rows_name_the_row(row: dict, message: str) -> None:
    rows = [
        {"session_id": "a", "start": "2026-11-25T16:00:00Z", "limit_a": 16, "end": ""},
        {"session_id": "b", "start": "2026-11-25T16:00:00Z", "limit_a": 16, "end": "", **row},
    ]
    with pytest.raises(MeasurementError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_profiles(pd.DataFrame(rows).astype(str))


def test_missing_column_empty_and_bad_schedule(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"profiles\.limit_a: column missing"):
        load_profiles([{"session_id": "a", "start": "2026-11-25T16:00:00Z"}])
    with pytest.raises(MeasurementError, match="holds no profiles"):
        load_profiles(pd.DataFrame(columns=["session_id", "start", "limit_a"]))
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(MeasurementError, match=r"profiles\.format"):
        load_profiles(path)
    path.write_text(
        json.dumps(
            {
                "format": "gridcharge.schedule/1",
                "grid": {"start": "2026-11-25T16:00:00Z", "step_s": 900, "steps": 2},
                "sessions": {"a": {"current_a": [16.0]}},
            }
        )
    )
    with pytest.raises(MeasurementError, match=r"profiles.sessions.a.current_a: .*2 currents"):
        load_profiles(path)


def test_a_plan_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import measurement.io as mio

    monkeypatch.setattr(mio, "MAX_PLAN_CELLS", 3)
    rows = [
        {"session_id": sid, "start": f"2026-11-25T16:0{m}:00Z", "limit_a": 16}
        for sid in ("a", "b")
        for m in range(3)
    ]
    with pytest.raises(MeasurementError, match="too large a plan"):
        load_profiles(rows)
