"""Leakage-free features of sessions at their arrival.

Every feature of a session is known when the car plugs in: its arrival (local time of day as a
point on the circle, weekday, weekend, public holiday), its station, the driver's stated
departure and requested energy where trustworthy, and the user's history made *only* of that
user's sessions that ended before this arrival (a session still plugged in at this arrival is
not yet history, even if it started earlier).
"""

from __future__ import annotations

from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

CATEGORICAL = ["station_id"]
NUMERIC = [
    "tod_sin",
    "tod_cos",
    "weekday",
    "weekend",
    "holiday",
    "user_count",
    "user_median_stay_h",
    "user_median_energy_kwh",
    "user_median_leave_h",
    "user_leave_gap_h",
    "user_recency_h",
    "has_stated",
    "stated_stay_h",
    "stated_energy_kwh",
]
FEATURES = CATEGORICAL + NUMERIC
"""Columns of :func:`build_features`, in this order."""

_H = np.timedelta64(3600, "s")


@lru_cache(maxsize=32)
def _holiday_dates(country: str, first: int, last: int) -> frozenset[np.datetime64]:
    cal = holidays.country_holidays(country, years=range(first, last + 1))
    return frozenset(np.datetime64(d, "D") for d in cal)


def local_hour(df: pd.DataFrame) -> np.ndarray:
    """Local time of day of arrival [h] in [0, 24)."""
    local = df["arrival"] + pd.to_timedelta(df["utc_offset_h"], unit="h")
    return np.asarray(
        local.dt.hour + local.dt.minute / 60.0 + local.dt.second / 3600.0, dtype=float
    )


def stay_h(df: pd.DataFrame) -> np.ndarray:
    """Stay = departure − arrival [h] (``NaN`` where the departure is unknown)."""
    return np.asarray((df["departure"] - df["arrival"]) / pd.Timedelta(hours=1), dtype=float)


def user_history(df: pd.DataFrame) -> pd.DataFrame:
    """Per-user history at each arrival, from that user's sessions ended strictly before it.

    Returns
    -------
    DataFrame
        ``user_count`` (sessions ended before arrival), ``user_median_stay_h`` [h],
        ``user_median_energy_kwh`` [kWh], ``user_median_leave_h`` (median local time of day of
        their departures [h]), ``user_recency_h`` (arrival − last departure [h]); ``NaN`` (and
        count 0) without history or user id. Same index as ``df``.
    """
    n = len(df)
    count = np.zeros(n)
    med_stay = np.full(n, np.nan)
    med_kwh = np.full(n, np.nan)
    med_leave = np.full(n, np.nan)
    recency = np.full(n, np.nan)
    arrival = df["arrival"].to_numpy(dtype="datetime64[ns]")
    departure = df["departure"].to_numpy(dtype="datetime64[ns]")
    stays = stay_h(df)
    kwh = df["energy_kwh"].to_numpy(dtype=float)
    leave_local = (
        (df["departure"] + pd.to_timedelta(df["utc_offset_h"], unit="h")).dt.hour
        + (df["departure"] + pd.to_timedelta(df["utc_offset_h"], unit="h")).dt.minute / 60.0
    ).to_numpy(dtype=float)
    users = df["user_id"].to_numpy(dtype=object)
    has_user = np.array([u is not None and u == u for u in users])
    groups: dict[object, list[int]] = {}
    for i in np.flatnonzero(has_user):
        groups.setdefault(users[i], []).append(int(i))
    for idx_list in groups.values():
        idx = np.asarray(idx_list)
        dep = departure[idx]
        ended = ~np.isnat(dep)
        if not ended.any():
            continue
        order = np.argsort(np.where(ended, dep, np.datetime64("NaT")), kind="stable")
        order = order[ended[order]]  # ended sessions by departure
        dep_sorted = dep[order]
        s_sorted, e_sorted, l_sorted = stays[idx][order], kwh[idx][order], leave_local[idx][order]
        k_all = np.searchsorted(dep_sorted, arrival[idx], side="left")  # departures < arrival
        for j, k in zip(idx, k_all, strict=True):
            if k == 0:
                continue
            count[j] = k
            med_stay[j] = np.median(s_sorted[:k])
            e = e_sorted[:k]
            e = e[np.isfinite(e)]
            if e.size:
                med_kwh[j] = np.median(e)
            med_leave[j] = np.median(l_sorted[:k])
            recency[j] = (arrival[j] - dep_sorted[k - 1]) / _H
    return pd.DataFrame(
        {
            "user_count": count,
            "user_median_stay_h": med_stay,
            "user_median_energy_kwh": med_kwh,
            "user_median_leave_h": med_leave,
            "user_recency_h": recency,
        },
        index=df.index,
    )


def build_features(df: pd.DataFrame, holiday_country: str = "NL") -> pd.DataFrame:
    """The features :data:`FEATURES` of every session of a canonical frame (``data.COLUMNS``).

    Parameters
    ----------
    df : DataFrame
        Sessions (``forecasting.data``); the departures and energies serve only as history of
        later sessions of the same user, never as a feature of their own session.
    holiday_country : str
        ISO country code of the public-holiday calendar (``holidays`` package), default NL.

    Notes
    -----
    - ``tod_sin``, ``tod_cos``: ``sin``/``cos`` of 2π·(local arrival hour)/24.
    - ``holiday``: the local arrival date is a public holiday of ``holiday_country``.
    - ``user_leave_gap_h``: the user's median local departure time of day minus this arrival's
      local time of day [h] (wrapped to (−12, 12]); a habit "leaves at 17:00" as a stay.
    - ``has_stated``: the driver stated a departure; ``stated_stay_h`` its distance from arrival
      [h] (``NaN`` without one). Loaders keep stated values only where trustworthy.
    """
    hour = local_hour(df)
    local = df["arrival"] + pd.to_timedelta(df["utc_offset_h"], unit="h")
    weekday = local.dt.day_of_week.to_numpy(dtype=float)
    days = local.dt.tz_localize(None).to_numpy(dtype="datetime64[D]")
    if len(df):
        years = local.dt.year
        cal = _holiday_dates(holiday_country, int(years.min()), int(years.max()))
        holiday = np.array([d in cal for d in days], dtype=float)
    else:
        holiday = np.zeros(0)
    hist = user_history(df)
    gap = hist["user_median_leave_h"].to_numpy() - hour
    gap = (gap + 12.0) % 24.0 - 12.0
    stated = np.array((df["stated_departure"] - df["arrival"]) / pd.Timedelta(hours=1), dtype=float)
    stated[~(stated > 0)] = np.nan
    out = pd.DataFrame(
        {
            "station_id": df["station_id"].astype(str).to_numpy(),
            "tod_sin": np.sin(2 * np.pi * hour / 24.0),
            "tod_cos": np.cos(2 * np.pi * hour / 24.0),
            "weekday": weekday,
            "weekend": (weekday >= 5).astype(float),
            "holiday": holiday,
            "user_count": hist["user_count"].to_numpy(),
            "user_median_stay_h": hist["user_median_stay_h"].to_numpy(),
            "user_median_energy_kwh": hist["user_median_energy_kwh"].to_numpy(),
            "user_median_leave_h": hist["user_median_leave_h"].to_numpy(),
            "user_leave_gap_h": gap,
            "user_recency_h": hist["user_recency_h"].to_numpy(),
            "has_stated": np.isfinite(stated).astype(float),
            "stated_stay_h": stated,
            "stated_energy_kwh": df["stated_energy_kwh"].to_numpy(dtype=float),
        },
        index=df.index,
    )
    return out[FEATURES]
