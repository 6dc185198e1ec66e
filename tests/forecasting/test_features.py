"""Features: strictly from the past (no leakage), cyclic time of day, calendar, stated values."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.data import load_csv
from forecasting.features import FEATURES, build_features
from tests.forecasting.conftest import HEADER, commuter_csv

# user u: s1 08:00–12:00 (4 h), s2 arrives 10:00 while s1 is still plugged in, s3 arrives
# 13:00 (after s1 ended, before s2 ended), s4 next day (after all three)
HAND = HEADER + (
    "s1,u,st-1,2026-01-05T08:00:00+00:00,2026-01-05T12:00:00+00:00,10\n"
    "s2,u,st-2,2026-01-05T10:00:00+00:00,2026-01-05T18:00:00+00:00,30\n"
    "s3,u,st-1,2026-01-05T13:00:00+00:00,2026-01-05T14:00:00+00:00,2\n"
    "s4,u,st-1,2026-01-06T08:00:00+00:00,2026-01-06T09:00:00+00:00,1\n"
    "s5,v,st-1,2026-01-06T08:00:00+00:00,2026-01-06T09:00:00+00:00,1\n"
)


def feats(text: str, country: str = "NL") -> dict[str, dict[str, float]]:
    df = load_csv(text.encode(), salt="t")
    X = build_features(df, country)
    assert list(X.columns) == FEATURES
    return {sid: X.iloc[i].to_dict() for i, sid in enumerate(df["session_id"])}


def test_history_only_from_sessions_ended_before_arrival() -> None:
    f = feats(HAND)
    assert f["s1"]["user_count"] == 0 and np.isnan(f["s1"]["user_median_stay_h"])
    assert f["s2"]["user_count"] == 0  # s1 started earlier but had not ended
    assert f["s3"]["user_count"] == 1 and f["s3"]["user_median_stay_h"] == 4.0
    assert f["s3"]["user_recency_h"] == 1.0 and f["s3"]["user_median_energy_kwh"] == 10.0
    assert f["s4"]["user_count"] == 3 and f["s4"]["user_median_stay_h"] == 4.0
    assert f["s4"]["user_median_leave_h"] == 14.0  # median of 12, 18, 14 h
    assert f["s4"]["user_leave_gap_h"] == 6.0
    assert f["s5"]["user_count"] == 0  # another user's sessions are not history


def test_future_sessions_do_not_change_past_features() -> None:
    text = commuter_csv(days=20)
    df = load_csv(text.encode(), salt="t")
    X = build_features(df)
    cut = len(df) // 2
    changed = df.copy()
    later = changed.index >= cut
    changed.loc[later, "departure"] = changed.loc[later, "departure"] + np.timedelta64(7, "h")
    changed.loc[later, "energy_kwh"] = 99.0
    X2 = build_features(changed)
    # sessions arriving before every changed session's arrival keep identical features
    first_changed = df["arrival"].iat[cut]
    before = (df["arrival"] < first_changed).to_numpy()
    assert X[before].equals(X2[before])
    # and truncating the future gives the same features
    X3 = build_features(df.iloc[:cut])
    assert X3.equals(X.iloc[:cut])


def test_time_of_day_is_cyclic_and_local() -> None:
    text = HEADER + (
        "a,,s,2026-01-05T23:59:00+01:00,2026-01-06T08:00:00+01:00,1\n"
        "b,,s,2026-01-06T00:01:00+01:00,2026-01-06T08:00:00+01:00,1\n"
        "c,,s,2026-01-06T12:00:00+01:00,2026-01-06T13:00:00+01:00,1\n"
    )
    f = feats(text)
    da = np.hypot(f["a"]["tod_sin"] - f["b"]["tod_sin"], f["a"]["tod_cos"] - f["b"]["tod_cos"])
    assert da < 0.02  # 23:59 and 00:01 are neighbours
    assert f["c"]["tod_cos"] == pytest.approx(-1.0)  # local noon
    assert f["a"]["weekday"] == 0 and f["b"]["weekday"] == 1  # local Monday / Tuesday


def test_holidays_and_stated_departure() -> None:
    text = (
        "session_id,user_id,station_id,arrival,departure,energy_kwh,stated_departure,"
        "stated_energy_kwh\n"
        "x,,s,2026-12-25T09:00:00+01:00,2026-12-25T11:00:00+01:00,3,2026-12-25T12:30:00+01:00,8\n"
        "y,,s,2026-12-28T09:00:00+01:00,2026-12-28T11:00:00+01:00,3,,\n"
    )
    f = feats(text)
    assert f["x"]["holiday"] == 1.0 and f["y"]["holiday"] == 0.0  # Christmas in NL
    assert f["x"]["has_stated"] == 1.0 and f["x"]["stated_stay_h"] == 3.5
    assert f["x"]["stated_energy_kwh"] == 8.0
    assert f["y"]["has_stated"] == 0.0 and np.isnan(f["y"]["stated_stay_h"])
    assert feats(text.replace("2026-12-25", "2026-07-04"), "US")["x"]["holiday"] == 1.0
