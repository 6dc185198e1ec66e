"""Read and validate the measurement inputs: meter states, activations, smart-meter energy and
imbalance prices (formats in ``docs/MEASUREMENT.md``).

Each loader takes a path (``.csv`` or ``.json``, a JSON list of objects) or a
:class:`pandas.DataFrame` and returns a normalised frame with units in the column names and times
as UTC seconds since the Unix epoch (``*_s`` columns, float). Every refusal is a
:class:`~measurement.errors.MeasurementError` naming the table, row and column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from measurement.errors import (
    BadActivation,
    MeasurementError,
    MissingColumn,
    NaiveTimestamp,
    NegativeEnergy,
)
from measurement.shifted import Plan

VOLTAGE_V = 230.0
DEFAULT_MIN_CURRENT_A = 8.0
_OFFSET = r"(?:Z|z|[+-]\d\d:?\d\d)$"

MAX_PLAN_CELLS = 50_000_000
"""Largest sessions × distinct-times table :func:`load_profiles` builds [-]."""

Table: TypeAlias = str | Path | pd.DataFrame | list[dict[str, Any]]


def read_table(source: Table, name: str) -> pd.DataFrame:
    """A table from a CSV/JSON file, a list of records or a frame (copied), all as given."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, list):
        return pd.DataFrame.from_records(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MeasurementError(name, str(path), f"cannot be read: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MeasurementError(
                name, str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise MeasurementError(name, str(path), "must be a JSON list of objects")
        return pd.DataFrame.from_records(data)
    try:
        from io import StringIO

        return pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MeasurementError(name, str(path), f"is not a valid CSV file ({exc})") from None


def _require(df: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    for col in columns:
        if col not in df.columns:
            raise MissingColumn(f"{name}.{col}", sorted(map(str, df.columns)), "column missing")


def parse_times(values: pd.Series, field: str) -> np.ndarray:
    """ISO-8601 date-times with offset → UTC seconds since the epoch [s].

    Raises
    ------
    NaiveTimestamp
        Naming ``field[row]`` for the first value without offset or not a date-time.
    """
    text = values.astype(str).str.strip()
    has_offset = text.str.contains(_OFFSET, regex=True)
    if not has_offset.all():
        row = int(np.argmin(has_offset.to_numpy()))
        raise NaiveTimestamp(
            f"{field.replace('.', f'[{row}].', 1)}", text.iloc[row], "needs a UTC offset"
        )
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise NaiveTimestamp(
            f"{field.replace('.', f'[{row}].', 1)}", text.iloc[row], "not an ISO-8601 date-time"
        )
    ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ns / 1e9


def parse_numbers(
    df: pd.DataFrame, name: str, col: str, default: float | None = None, minimum: float = 0.0
) -> np.ndarray:
    """A numeric column [unit of the column]; empty cells take ``default`` (NaN if None)."""
    if col not in df.columns:
        if default is None:
            raise MissingColumn(f"{name}.{col}", sorted(map(str, df.columns)), "column missing")
        return np.full(len(df), default, dtype=float)
    raw = df[col]
    blank = raw.isna() | (raw.astype(str).str.strip() == "")
    num = pd.to_numeric(raw.where(~blank, None), errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(num) & ~blank.to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise MeasurementError(f"{name}[{row}].{col}", raw.iloc[row], "not a number")
    if default is not None:
        num = np.where(blank.to_numpy(), default, num)
    below = num < minimum
    if below.any():
        row = int(np.argmax(below))
        cls = NegativeEnergy if minimum == 0.0 else MeasurementError
        raise cls(f"{name}[{row}].{col}", raw.iloc[row], f"must be >= {minimum:g}")
    return num


def parse_flags(df: pd.DataFrame, name: str, col: str) -> np.ndarray:
    """A boolean column (``true/false``, ``1/0``, empty = false)."""
    if col not in df.columns:
        return np.zeros(len(df), dtype=bool)
    text = df[col].fillna("").astype(str).str.strip().str.lower()
    ok = text.isin(["true", "false", "1", "0", "", "1.0", "0.0", "yes", "no"])
    if not ok.all():
        row = int(np.argmin(ok.to_numpy()))
        raise MeasurementError(f"{name}[{row}].{col}", df[col].iloc[row], "not true or false")
    return text.isin(["true", "1", "1.0", "yes"]).to_numpy()


def _text(df: pd.DataFrame, col: str, default: str = "") -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), default, dtype=object)
    return df[col].fillna(default).astype(str).str.strip().to_numpy(dtype=object)


def load_states(source: Table, voltage_v: float = VOLTAGE_V) -> pd.DataFrame:
    """Meter states of charging sessions, one row per state.

    Returns
    -------
    pandas.DataFrame
        Columns ``session_id, t_s [s], e_kwh [kWh], i_l1_a, i_l2_a, i_l3_a [A], phases [-],
        p_kw [kW] (power from the reported currents), station, subcluster, region,
        min_current_a [A], profile_a [A] (NaN when unknown), opt_out, energy_need_kwh [kWh]
        (the charging preferences' energy need from plug-in; NaN when not given)``; sorted by
        session and time.

    Raises
    ------
    MeasurementError
        Missing column, no offset, negative energy or current, bad number.
    """
    name = "states"
    df = read_table(source, name)
    if df.empty:
        raise MeasurementError(name, 0, "holds no states")
    df = df.reset_index(drop=True)
    _require(df, name, ("session_id", "timestamp", "kwh"))
    out = pd.DataFrame(
        {
            "session_id": _text(df, "session_id"),
            "t_s": parse_times(df["timestamp"], f"{name}.timestamp"),
            "e_kwh": parse_numbers(df, name, "kwh"),
        }
    )
    if (out["session_id"] == "").any():
        row = int(np.argmax((out["session_id"] == "").to_numpy()))
        raise MeasurementError(f"{name}[{row}].session_id", "", "must not be empty")
    currents = np.column_stack(
        [parse_numbers(df, name, f"current_{ph}_a", default=0.0) for ph in ("l1", "l2", "l3")]
    )
    out["i_l1_a"], out["i_l2_a"], out["i_l3_a"] = currents.T
    counted = np.maximum((currents > 0.5).sum(axis=1), 1)
    phases = parse_numbers(df, name, "phases", default=np.nan) if "phases" in df else None
    if phases is not None:
        bad = ~np.isnan(phases) & ~np.isin(phases, (1.0, 2.0, 3.0))
        if bad.any():
            row = int(np.argmax(bad))
            raise MeasurementError(f"{name}[{row}].phases", df["phases"].iloc[row], "must be 1-3")
        out["phases"] = np.where(np.isnan(phases), counted, phases).astype(int)
    else:
        out["phases"] = counted
    out["p_kw"] = currents.sum(axis=1) * voltage_v / 1000.0
    out["station"] = _text(df, "station")
    out["subcluster"] = _text(df, "subcluster")
    out["region"] = _text(df, "region")
    out["min_current_a"] = parse_numbers(df, name, "min_current_a", DEFAULT_MIN_CURRENT_A)
    out["profile_a"] = parse_numbers(df, name, "profile_a", default=np.nan)
    out["opt_out"] = parse_flags(df, name, "opt_out")
    out["energy_need_kwh"] = parse_numbers(df, name, "energy_need_kwh", default=np.nan)
    out["row"] = np.arange(len(out))
    return out.sort_values(["session_id", "t_s", "e_kwh"], kind="stable").reset_index(drop=True)


def load_activations(source: Table) -> pd.DataFrame:
    """The activation log: ``id, t_signal, t_clear`` (or ``end``), optional ``region`` and
    ``price_eur_per_mwh``.

    Returns
    -------
    pandas.DataFrame
        Columns ``id, t_signal_s, t_clear_s [s], region ('' = all), price_eur_per_mwh
        [EUR/MWh] (NaN when not given)``.
    """
    name = "activations"
    df = read_table(source, name).reset_index(drop=True)
    if df.empty:
        raise MeasurementError(name, 0, "holds no activations")
    if "t_clear" not in df.columns and "end" in df.columns:
        df = df.rename(columns={"end": "t_clear"})
    _require(df, name, ("id", "t_signal", "t_clear"))
    out = pd.DataFrame(
        {
            "id": _text(df, "id"),
            "t_signal_s": parse_times(df["t_signal"], f"{name}.t_signal"),
            "t_clear_s": parse_times(df["t_clear"], f"{name}.t_clear"),
            "region": _text(df, "region"),
            "price_eur_per_mwh": parse_numbers(
                df, name, "price_eur_per_mwh", default=np.nan, minimum=-np.inf
            ),
        }
    )
    order = out["t_clear_s"] <= out["t_signal_s"]
    if order.any():
        row = int(np.argmax(order.to_numpy()))
        raise BadActivation(
            f"{name}[{row}].t_clear", str(df["t_clear"].iloc[row]), "must be after t_signal"
        )
    empty = out["id"] == ""
    if empty.any():
        raise BadActivation(f"{name}[{int(np.argmax(empty.to_numpy()))}].id", "", "is empty")
    dup = out["id"].duplicated()
    if dup.any():
        row = int(np.argmax(dup.to_numpy()))
        raise BadActivation(f"{name}[{row}].id", out["id"].iloc[row], "duplicate activation id")
    return out


def load_meters(source: Table) -> pd.DataFrame:
    """Station smart-meter energy per ISP: ``station, start, kwh``.

    Returns
    -------
    pandas.DataFrame
        Columns ``station, start_s [s], e_kwh [kWh]``.
    """
    name = "meters"
    df = read_table(source, name).reset_index(drop=True)
    _require(df, name, ("station", "start", "kwh"))
    return pd.DataFrame(
        {
            "station": _text(df, "station"),
            "start_s": parse_times(df["start"], f"{name}.start"),
            "e_kwh": parse_numbers(df, name, "kwh"),
        }
    )


def load_prices(source: Table) -> pd.DataFrame:
    """Imbalance prices per ISP: ``start, price_eur_per_mwh`` (may be negative).

    Returns
    -------
    pandas.DataFrame
        Columns ``start_s [s], price_eur_per_mwh [EUR/MWh]``, sorted by start.
    """
    name = "prices"
    df = read_table(source, name).reset_index(drop=True)
    _require(df, name, ("start", "price_eur_per_mwh"))
    out = pd.DataFrame(
        {
            "start_s": parse_times(df["start"], f"{name}.start"),
            "price_eur_per_mwh": parse_numbers(df, name, "price_eur_per_mwh", minimum=-np.inf),
        }
    )
    return out.sort_values("start_s").reset_index(drop=True)


def load_profiles(source: Table) -> Plan:
    """The charging profiles published to each session (the plan the per-session baseline
    follows): ``session_id, start, limit_a`` and optional ``end``; or a ``gridcharge solve``
    schedule (a JSON object with ``"format": "gridcharge.schedule/1"``, each session's
    ``current_a`` per grid step).

    Each row sets the session's limit [A] from ``start`` until the session's next row, or
    until its ``end`` when given (no plan after it); the last row without ``end`` holds to
    the end of the data.

    Returns
    -------
    measurement.shifted.Plan
        The limits on the union of all rows' times.

    Raises
    ------
    MeasurementError
        Missing column, no offset, negative or non-numeric limit, ``end`` not after
        ``start``, the same session and start twice, a malformed schedule.
    """
    name = "profiles"
    if isinstance(source, str | Path) and Path(source).suffix.lower() == ".json":
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MeasurementError(name, str(path), f"cannot be read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise MeasurementError(
                name, str(path), f"is not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        if isinstance(data, dict):
            return _schedule_plan(data)
        source = data if isinstance(data, list) else source
    df = read_table(source, name).reset_index(drop=True)
    if df.empty:
        raise MeasurementError(name, 0, "holds no profiles")
    _require(df, name, ("session_id", "start", "limit_a"))
    sid = _text(df, "session_id")
    if (sid == "").any():
        row = int(np.argmax(sid == ""))
        raise MeasurementError(f"{name}[{row}].session_id", "", "must not be empty")
    start = parse_times(df["start"], f"{name}.start")
    limit = parse_numbers(df, name, "limit_a")
    end = np.full(len(df), np.nan)
    if "end" in df.columns:
        given = ~(df["end"].isna() | (df["end"].astype(str).str.strip() == "")).to_numpy()
        if given.any():
            end[given] = parse_times(df["end"][given], f"{name}.end")
            rows = np.nonzero(given)[0]
            bad = end[given] <= start[given]
            if bad.any():
                row = int(rows[np.argmax(bad)])
                raise MeasurementError(
                    f"{name}[{row}].end", str(df["end"].iloc[row]), "must be after start"
                )
    frame = pd.DataFrame({"sid": sid, "start": start, "limit": limit, "end": end})
    dup = frame.duplicated(["sid", "start"])
    if dup.any():
        row = int(np.argmax(dup.to_numpy()))
        raise MeasurementError(
            f"{name}[{row}].start", str(df["start"].iloc[row]), f"duplicate for session {sid[row]}"
        )
    frame = frame.sort_values(["sid", "start"], kind="stable")
    times = np.r_[frame["start"].to_numpy(), frame["end"].dropna().to_numpy()]
    horizon = float(times.max()) + 86400.0
    nxt = frame.groupby("sid")["start"].shift(-1).to_numpy(float)
    stop = np.where(np.isnan(nxt), horizon, nxt)
    stop = np.where(np.isnan(frame["end"].to_numpy()), stop, np.minimum(stop, frame["end"]))
    edges = np.unique(np.r_[times, horizon])
    ids, inv = np.unique(frame["sid"].to_numpy().astype(str), return_inverse=True)
    if ids.size * (edges.size - 1) > MAX_PLAN_CELLS:
        raise MeasurementError(
            name,
            f"{edges.size - 1} distinct times x {ids.size} sessions",
            "too large a plan; align the profiles' start and end times (e.g. to whole minutes)",
        )
    limits = np.full((ids.size, edges.size - 1), np.nan)
    j0 = np.searchsorted(edges, frame["start"].to_numpy())
    j1 = np.searchsorted(edges, stop)
    lim = frame["limit"].to_numpy()
    for k in range(len(frame)):
        limits[inv[k], j0[k] : j1[k]] = lim[k]
    return Plan(ids.astype(object), edges, limits)


def _schedule_plan(data: dict[str, Any]) -> Plan:
    """A :class:`Plan` from a ``gridcharge.schedule/1`` object (currents per grid step)."""
    name = "profiles"
    if data.get("format") != "gridcharge.schedule/1":
        raise MeasurementError(
            f"{name}.format",
            data.get("format"),
            "a JSON object must be a gridcharge.schedule/1 (or give a list of rows)",
        )
    grid = data.get("grid")
    sessions = data.get("sessions")
    if not isinstance(grid, dict) or not isinstance(sessions, dict):
        raise MeasurementError(f"{name}.grid", None, "schedule needs grid and sessions")
    start = parse_times(pd.Series([str(grid.get("start"))]), f"{name}.grid.start")[0]
    step_s = grid.get("step_s")
    steps = grid.get("steps")
    if not isinstance(step_s, int) or step_s <= 0:
        raise MeasurementError(f"{name}.grid.step_s", step_s, "must be a positive integer")
    if not isinstance(steps, int) or steps <= 0:
        raise MeasurementError(f"{name}.grid.steps", steps, "must be a positive integer")
    ids = sorted(sessions)
    limits = np.zeros((len(ids), steps))
    for k, sid in enumerate(ids):
        cur = sessions[sid].get("current_a") if isinstance(sessions[sid], dict) else None
        try:
            arr = np.asarray(cur, dtype=float)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.shape != (steps,) or not np.isfinite(arr).all() or (arr < 0).any():
            raise MeasurementError(
                f"{name}.sessions.{sid}.current_a",
                None if cur is None else f"{len(cur) if isinstance(cur, list) else cur}",
                f"must be {steps} currents >= 0 [A]",
            )
        limits[k] = arr
    edges = start + step_s * np.arange(steps + 1, dtype=float)
    return Plan(np.array(ids, dtype=object), edges, limits)
