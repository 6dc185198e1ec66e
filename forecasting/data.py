"""Loaders of charging sessions for training and prediction, into one canonical frame.

Formats (documented in ``docs/FORECASTING.md``):

- ``csv``: the generic CSV ``session_id, user_id, station_id, arrival, departure, energy_kwh``
  (optional ``stated_departure``, ``stated_energy_kwh``); times ISO 8601 *with* a UTC offset.
- ``ocpi``: OCPI 2.2.1 CDRs or Sessions as a JSON list (or an OCPI response with ``data``).
- ``acn``: ACN-Data, either the API's JSON (``_items``) or the CSV export with ``arrival``,
  ``departure``, ``requested_energy (kWh)``, ``delivered_energy (kWh)``, ``station_id``,
  ``session_id``, ``estimated_departure``, ``claimed``.
- the service's own completed sessions (:func:`from_records`).

User ids are replaced on ingest by a salted hash (HMAC-SHA256 with the salt); the raw id never
leaves the loader. Every loader returns the frame of :data:`COLUMNS`, sorted by arrival:

=====================  ===================================================================
``session_id``         str
``user_id``            salted hash of the user/token id, or ``None``
``station_id``         str (station, EVSE or location)
``arrival``            UTC (``datetime64[ns, UTC]``)
``departure``          UTC; ``NaT`` only where the caller allowed it (prediction input)
``energy_kwh``         delivered energy [kWh]; ``NaN`` when unknown
``utc_offset_h``       local UTC offset at arrival [h] (local time = UTC + offset)
``stated_departure``   the driver's stated departure (UTC), ``NaT`` unless trustworthy
``stated_energy_kwh``  the driver's requested energy [kWh], ``NaN`` unless trustworthy
=====================  ===================================================================
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from forecasting.errors import ForecastDataError

Format = Literal["csv", "ocpi", "acn"]
FORMATS: tuple[str, ...] = ("csv", "ocpi", "acn")

COLUMNS = [
    "session_id",
    "user_id",
    "station_id",
    "arrival",
    "departure",
    "energy_kwh",
    "utc_offset_h",
    "stated_departure",
    "stated_energy_kwh",
]
CSV_REQUIRED = ["session_id", "user_id", "station_id", "arrival", "departure", "energy_kwh"]
ACN_CSV_REQUIRED = [
    "arrival",
    "departure",
    "delivered_energy (kWh)",
    "station_id",
    "session_id",
]
ACN_LOCAL_TZ = "America/Los_Angeles"
"""Local time zone of the ACN-Data sites (Caltech, JPL); the API's times are in GMT."""
_UTC_ZONE = ZoneInfo("UTC")
OCPI_LOCAL_TZ = "Europe/Amsterdam"
"""Default local time zone of OCPI data (OCPI times are UTC)."""


def make_salt(salt: str | bytes | None) -> bytes:
    """The salt as bytes; ``None`` (or ``""``) gives a fresh random salt.

    A random salt is enough for training and prediction: models never store user ids, the
    per-user history is recomputed from the data given with each call.
    """
    if salt is None or salt in ("", b""):
        env = os.environ.get("GRIDCHARGE_FORECAST_SALT")
        return env.encode("utf-8") if env else secrets.token_bytes(16)
    return salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)


def hash_user(uid: str | None, salt: bytes) -> str | None:
    """HMAC-SHA256 of a user or token id with ``salt`` (first 32 hex digits); ``None`` for an
    empty id. Ids are upper-cased first (OCPI token uids are case-insensitive)."""
    if uid is None:
        return None
    text = str(uid).strip()
    if not text or text.upper() in ("NA", "NAN", "NONE", "NULL"):
        return None
    return hmac.new(salt, text.upper().encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _where(row: int, session_id: object, column: str) -> str:
    sid = f" (session {session_id})" if session_id not in (None, "") else ""
    return f"row {row + 1}{sid}.{column}"


def parse_time(
    value: object, field: str, *, naive_tz: ZoneInfo | None = None
) -> tuple[datetime, float]:
    """An ISO 8601 time with offset → ``(UTC datetime, local UTC offset [h])``.

    Parameters
    ----------
    value : object
        The text (``2026-03-01T08:15:00+01:00``, ``...Z``).
    field : str
        Named in the error.
    naive_tz : ZoneInfo, optional
        Time zone that a time without offset is read in (OCPI: UTC). ``None``: such a time is
        an error.

    Raises
    ------
    ForecastDataError
        Not a time, or no UTC offset where one is needed.
    """
    text = str(value).strip() if value is not None else ""
    if not text:
        raise ForecastDataError(field, value, "missing time")
    try:
        t = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        raise ForecastDataError(field, value, "not an ISO 8601 time") from None
    if t.tzinfo is None:
        if naive_tz is None:
            raise ForecastDataError(
                field, value, "time without UTC offset (write e.g. 2026-03-01T08:15:00+01:00)"
            )
        t = t.replace(tzinfo=naive_tz)
    if not 1970 <= t.year <= 2200:
        raise ForecastDataError(field, value, "year outside 1970..2200")
    off = t.utcoffset()
    assert off is not None
    return t.astimezone(UTC), off.total_seconds() / 3600.0


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise ForecastDataError("local_tz", name, "unknown time zone") from None


def _local_offset_h(t: datetime, tz: ZoneInfo) -> float:
    off = t.astimezone(tz).utcoffset()
    return 0.0 if off is None else off.total_seconds() / 3600.0


def _float(value: object, field: str, *, optional: bool) -> float:
    text = "" if value is None else str(value).strip()
    if text == "" or text.upper() in ("NA", "NAN", "NULL", "NONE"):
        if optional:
            return float("nan")
        raise ForecastDataError(field, value, "missing number")
    try:
        x = float(text)
    except ValueError:
        raise ForecastDataError(field, value, "not a number") from None
    if not np.isfinite(x) or x < 0:
        raise ForecastDataError(field, value, "must be a finite number ≥ 0")
    return x


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ForecastDataError("data", str(path), "no such file")
        data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            raise ForecastDataError("data", "gzip", "corrupt gzip file") from None
    return data


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ForecastDataError("data", f"byte {e.start}", "not UTF-8 text") from None


def _csv_rows(data: bytes, required: Sequence[str]) -> list[dict[str, str]]:
    text = _text(data)
    if not text.strip():
        raise ForecastDataError("data", None, "empty file (no header, no sessions)")
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ForecastDataError(
                f"column {missing[0]}", None, f"missing column (required: {', '.join(required)})"
            )
        rows = [
            {(k or "").strip(): v if isinstance(v, str) else "" for k, v in r.items()}
            for r in reader
        ]
    except csv.Error as e:
        raise ForecastDataError("data", f"line {reader.line_num}", f"not CSV: {e}") from None
    if not rows:
        raise ForecastDataError("data", None, "no sessions (the file has only a header)")
    return rows


def sessions_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The canonical frame (:data:`COLUMNS`) of parsed records (aware datetimes), sorted by
    arrival; refuses an empty list and duplicate session ids."""
    if not records:
        raise ForecastDataError("data", None, "no sessions")
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    for col in ("arrival", "departure", "stated_departure"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("energy_kwh", "utc_offset_h", "stated_energy_kwh"):
        df[col] = df[col].astype(float)
    df["session_id"] = df["session_id"].astype(str)
    df["station_id"] = df["station_id"].astype(str)
    df["user_id"] = df["user_id"].astype(object).where(df["user_id"].notna(), None)
    dup = df["session_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ForecastDataError(
            _where(i, df["session_id"].iat[i], "session_id"),
            df["session_id"].iat[i],
            "duplicate session id",
        )
    df = df.sort_values(["arrival", "session_id"], kind="stable").reset_index(drop=True)
    return df


def _check_order(i: int, sid: object, arrival: datetime, departure: datetime | None) -> None:
    if departure is not None and departure <= arrival:
        raise ForecastDataError(
            _where(i, sid, "departure"),
            departure.isoformat(),
            f"departure not after arrival {arrival.isoformat()}",
        )


def load_csv(
    source: str | Path | bytes, *, salt: str | bytes | None = None, require_departure: bool = True
) -> pd.DataFrame:
    """Sessions of the generic CSV (``docs/FORECASTING.md``).

    Parameters
    ----------
    source : str or Path or bytes
        File path (``.gz`` allowed) or its content.
    salt : str or bytes, optional
        Salt of the user-id hash (default: ``GRIDCHARGE_FORECAST_SALT`` or a random one).
    require_departure : bool
        ``False`` for prediction input: an empty departure is allowed (``NaT``).

    Raises
    ------
    ForecastDataError
        Empty file, missing column, a time without offset, departure before arrival, a bad
        number or duplicate session id; the message names row, session and column.
    """
    key = make_salt(salt)
    required = CSV_REQUIRED if require_departure else [c for c in CSV_REQUIRED if c != "departure"]
    rows = _csv_rows(_read_bytes(source), required)
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        sid = r["session_id"].strip()
        if not sid:
            raise ForecastDataError(_where(i, None, "session_id"), "", "missing session id")
        arrival, offset = parse_time(r["arrival"], _where(i, sid, "arrival"))
        dep_text = r.get("departure", "").strip()
        departure = None
        if dep_text or require_departure:
            departure, _ = parse_time(dep_text, _where(i, sid, "departure"))
        _check_order(i, sid, arrival, departure)
        stated = None
        if r.get("stated_departure", "").strip():
            stated, _ = parse_time(r["stated_departure"], _where(i, sid, "stated_departure"))
        out.append(
            {
                "session_id": sid,
                "user_id": hash_user(r["user_id"], key),
                "station_id": r["station_id"].strip() or "unknown",
                "arrival": arrival,
                "departure": departure,
                "energy_kwh": _float(
                    r["energy_kwh"], _where(i, sid, "energy_kwh"), optional=not require_departure
                ),
                "utc_offset_h": offset,
                "stated_departure": stated,
                "stated_energy_kwh": _float(
                    r.get("stated_energy_kwh"), _where(i, sid, "stated_energy_kwh"), optional=True
                ),
            }
        )
    return sessions_frame(out)


def _json(data: bytes) -> Any:
    text = _text(data)
    if not text.strip():
        raise ForecastDataError("data", None, "empty file (no sessions)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ForecastDataError("data", f"line {e.lineno}", f"not JSON: {e.msg}") from None


def _get(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def load_ocpi(
    source: str | Path | bytes,
    *,
    salt: str | bytes | None = None,
    local_tz: str = OCPI_LOCAL_TZ,
    require_departure: bool = True,
) -> pd.DataFrame:
    """Sessions of OCPI 2.2.1 CDRs or Sessions (a JSON list, or ``{"data": [...]}``).

    Fields: ``id``, ``start_date_time``, ``end_date_time``, ``total_energy`` (CDR) or ``kwh``
    (Session), ``cdr_token.uid``, ``cdr_location.id``/``evse_uid`` (CDR) or
    ``location_id``/``evse_uid`` (Session); the station is ``location/evse``. OCPI times are UTC
    (a time without designator is UTC, as the specification says); ``local_tz`` gives local
    time for the features.
    """
    key = make_salt(salt)
    tz = _zone(local_tz)
    doc = _json(_read_bytes(source))
    items = doc.get("data") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise ForecastDataError("data", type(items).__name__, "expected a list of CDRs/Sessions")
    if not items:
        raise ForecastDataError("data", None, "no sessions")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ForecastDataError(f"data[{i}]", type(item).__name__, "expected an object")
        sid = str(item.get("id") or "")
        for name in ("id", "start_date_time"):
            if not item.get(name):
                raise ForecastDataError(f"data[{i}].{name}", None, "missing field")
        arrival, _ = parse_time(
            item["start_date_time"], f"data[{i}].start_date_time", naive_tz=_UTC_ZONE
        )
        end = item.get("end_date_time")
        departure = None
        if end or require_departure:
            if not end:
                raise ForecastDataError(f"data[{i}].end_date_time", None, "missing field")
            departure, _ = parse_time(end, f"data[{i}].end_date_time", naive_tz=_UTC_ZONE)
        if departure is not None and departure <= arrival:
            raise ForecastDataError(
                f"data[{i}] (session {sid}).end_date_time",
                str(end),
                f"departure not after arrival {arrival.isoformat()}",
            )
        energy_field = "total_energy" if "total_energy" in item else "kwh"
        energy = item.get(energy_field)
        location = _get(item, "cdr_location.id") or item.get("location_id") or ""
        evse = _get(item, "cdr_location.evse_uid") or item.get("evse_uid") or ""
        out.append(
            {
                "session_id": sid,
                "user_id": hash_user(_get(item, "cdr_token.uid"), key),
                "station_id": f"{location}/{evse}" if evse else str(location or "unknown"),
                "arrival": arrival,
                "departure": departure,
                "energy_kwh": _float(
                    energy, f"data[{i}].{energy_field}", optional=not require_departure
                ),
                "utc_offset_h": _local_offset_h(arrival, tz),
                "stated_departure": None,
                "stated_energy_kwh": float("nan"),
            }
        )
    return sessions_frame(out)


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "t")


def load_acn(
    source: str | Path | bytes,
    *,
    salt: str | bytes | None = None,
    local_tz: str = ACN_LOCAL_TZ,
    require_departure: bool = True,
) -> pd.DataFrame:
    """Sessions of ACN-Data: the API's JSON (``{"_items": [...]}``) or its CSV export.

    The driver's stated departure and requested energy are kept only for *claimed* sessions
    (CSV: ``claimed`` true; JSON: a ``userInputs`` entry). In the CSV export the "requested"
    fields of unclaimed sessions are copies of the actual values: a target leak, dropped here.
    """
    key = make_salt(salt)
    data = _read_bytes(source)
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        return _acn_json(data, key, _zone(local_tz), require_departure)
    rows = _csv_rows(data, ACN_CSV_REQUIRED)
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        sid = r["session_id"].strip()
        arrival, offset = parse_time(r["arrival"], _where(i, sid, "arrival"))
        departure = None
        if r["departure"].strip() or require_departure:
            departure, _ = parse_time(r["departure"], _where(i, sid, "departure"))
        _check_order(i, sid, arrival, departure)
        claimed = _truthy(r.get("claimed", ""))
        stated = None
        stated_kwh = float("nan")
        if claimed:
            if r.get("estimated_departure", "").strip():
                stated, _ = parse_time(
                    r["estimated_departure"], _where(i, sid, "estimated_departure")
                )
            stated_kwh = _float(
                r.get("requested_energy (kWh)"),
                _where(i, sid, "requested_energy (kWh)"),
                optional=True,
            )
        out.append(
            {
                "session_id": sid,
                "user_id": hash_user(r.get("user_id") or r.get("userID"), key),
                "station_id": r["station_id"].strip() or "unknown",
                "arrival": arrival,
                "departure": departure,
                "energy_kwh": _float(
                    r["delivered_energy (kWh)"],
                    _where(i, sid, "delivered_energy (kWh)"),
                    optional=not require_departure,
                ),
                "utc_offset_h": offset,
                "stated_departure": stated,
                "stated_energy_kwh": stated_kwh,
            }
        )
    return sessions_frame(out)


def _rfc1123(value: object, field: str) -> datetime:
    text = str(value or "").strip()
    if not text:
        raise ForecastDataError(field, None, "missing time")
    try:
        t = parsedate_to_datetime(text)
    except Exception:  # email.utils raises several types on malformed dates
        t = None
    if t is None:
        return parse_time(text, field)[0]
    if t.tzinfo is None:
        raise ForecastDataError(field, value, "time without UTC offset")
    if not 1970 <= t.year <= 2200:
        raise ForecastDataError(field, value, "year outside 1970..2200")
    return t.astimezone(UTC)


def _acn_json(data: bytes, key: bytes, tz: ZoneInfo, require_departure: bool) -> pd.DataFrame:
    doc = _json(data)
    items = doc.get("_items") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise ForecastDataError("_items", None, "missing field (ACN-Data API JSON)")
    if not items:
        raise ForecastDataError("_items", None, "no sessions")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"_items[{i}]"
        if not isinstance(item, Mapping):
            raise ForecastDataError(where, type(item).__name__, "expected an object")
        for name in ("sessionID", "stationID", "connectionTime"):
            if item.get(name) in (None, ""):
                raise ForecastDataError(f"{where}.{name}", None, "missing field")
        sid = str(item["sessionID"])
        arrival = _rfc1123(item["connectionTime"], f"{where}.connectionTime")
        departure = None
        if item.get("disconnectTime") or require_departure:
            departure = _rfc1123(item.get("disconnectTime"), f"{where}.disconnectTime")
        if departure is not None and departure <= arrival:
            raise ForecastDataError(
                f"{where} (session {sid}).disconnectTime",
                str(item.get("disconnectTime")),
                f"departure not after arrival {arrival.isoformat()}",
            )
        inputs = item.get("userInputs") or []
        last = inputs[-1] if isinstance(inputs, list) and inputs else None
        stated = None
        stated_kwh = float("nan")
        if isinstance(last, Mapping):
            if last.get("requestedDeparture"):
                stated = _rfc1123(
                    last["requestedDeparture"], f"{where}.userInputs.requestedDeparture"
                )
            stated_kwh = _float(
                last.get("kWhRequested"), f"{where}.userInputs.kWhRequested", optional=True
            )
        out.append(
            {
                "session_id": sid,
                "user_id": hash_user(item.get("userID"), key),
                "station_id": str(item["stationID"]),
                "arrival": arrival,
                "departure": departure,
                "energy_kwh": _float(
                    item.get("kWhDelivered"),
                    f"{where}.kWhDelivered",
                    optional=not require_departure,
                ),
                "utc_offset_h": _local_offset_h(arrival, tz),
                "stated_departure": stated,
                "stated_energy_kwh": stated_kwh,
            }
        )
    return sessions_frame(out)


def load_sessions(
    source: str | Path | bytes,
    fmt: str = "csv",
    *,
    salt: str | bytes | None = None,
    local_tz: str | None = None,
    require_departure: bool = True,
) -> pd.DataFrame:
    """Sessions of a file in ``fmt`` (``csv``, ``ocpi`` or ``acn``); see the loaders."""
    if fmt == "csv":
        return load_csv(source, salt=salt, require_departure=require_departure)
    if fmt == "ocpi":
        return load_ocpi(
            source,
            salt=salt,
            local_tz=local_tz or OCPI_LOCAL_TZ,
            require_departure=require_departure,
        )
    if fmt == "acn":
        return load_acn(
            source,
            salt=salt,
            local_tz=local_tz or ACN_LOCAL_TZ,
            require_departure=require_departure,
        )
    raise ForecastDataError("format", fmt, f"unknown format (one of {', '.join(FORMATS)})")


def from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    salt: str | bytes | None = None,
    local_tz: str = OCPI_LOCAL_TZ,
    require_departure: bool = True,
) -> pd.DataFrame:
    """Sessions of the service's own records (``api`` stored sessions).

    Each record has ``session_id``, ``user`` (the stored token hash, re-hashed with the salt),
    ``station_id``, ``arrival``, ``departure`` (the end, or ``None`` while plugged in),
    ``energy_kwh`` and the driver's ``stated_departure``/``stated_energy_kwh`` (or ``None``):
    what a driver gives in the app is trustworthy input.
    """
    key = make_salt(salt)
    tz = _zone(local_tz)
    out: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        sid = str(r["session_id"])
        arrival = r["arrival"]
        if arrival is None or arrival.tzinfo is None:
            raise ForecastDataError(
                _where(i, sid, "arrival"), str(arrival), "naive or missing time"
            )
        departure = r.get("departure")
        if departure is None and require_departure:
            raise ForecastDataError(_where(i, sid, "departure"), None, "missing time")
        if departure is not None and departure.tzinfo is None:
            raise ForecastDataError(_where(i, sid, "departure"), str(departure), "naive time")
        _check_order(i, sid, arrival, departure)
        stated = r.get("stated_departure")
        if stated is not None and stated <= arrival:
            stated = None
        kwh = r.get("energy_kwh")
        stated_kwh = r.get("stated_energy_kwh")
        out.append(
            {
                "session_id": sid,
                "user_id": hash_user(r.get("user"), key),
                "station_id": str(r.get("station_id") or "unknown"),
                "arrival": arrival.astimezone(UTC),
                "departure": None if departure is None else departure.astimezone(UTC),
                "energy_kwh": float("nan") if kwh is None else float(kwh),
                "utc_offset_h": _local_offset_h(arrival, tz),
                "stated_departure": None if stated is None else stated.astimezone(UTC),
                "stated_energy_kwh": float("nan") if stated_kwh is None else float(stated_kwh),
            }
        )
    return sessions_frame(out)


def fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of the frame's sessions (ids, station, times, energy; not the user hashes,
    which change with the salt): the training-data fingerprint in model metadata."""
    h = hashlib.sha256()
    cols = ["session_id", "station_id", "arrival", "departure", "energy_kwh"]
    for row in df[cols].itertuples(index=False):
        h.update("|".join(str(v) for v in row).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
