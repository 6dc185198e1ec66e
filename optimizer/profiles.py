"""Charging profiles for one session: OCPP 1.6, OCPP 2.0.1 and OCPI 2.2.1.

A schedule plans the *average* current per phase of a session in every grid step
(``current_a``, see ``docs/formats.md``). A charger needs a *limit* instead. This module turns
the plan into a limit per step (:func:`profile_limits_a`) and the limits into the three wire
forms (:func:`session_profiles`; the OCPP forms follow from the OCPI one, :func:`ocpp_forms`).
The rules, with examples, are in ``docs/profiles.md``:

- while the car is plugged in the limit is never below the station minimum, except that a
  session with ``pause_consent`` planned at 0 A gets 0 A;
- otherwise the limit is the plan rounded *down* to 0.1 A (the protocols accept one decimal);
- the profile starts at the first present step and lasts for the present steps; consecutive
  steps with the same limit are merged into one period;
- the profile id is derived from the session id with SHA-256 (stable across runs).

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from optimizer.errors import GridchargeError

FORMATS = ("ocpp16", "ocpp201", "ocpi")
"""Profile formats :func:`session_profiles` can emit, in the order of its result."""

ZERO_TOL_A = 1e-3
"""A planned current at or below this counts as 0 A [A]; one slightly below 0 is taken as 0 A.
Equal to the checker's current tolerance, so solver noise does not break emission."""

ROUND_TOL_A = 1e-6
"""A plan this close below a multiple of 0.1 A is rounded to that multiple [A] (solver noise such
as 12.4999999 is sent as 12.5, not 12.4)."""

OCPP201_MAX_PERIODS = 1024
"""``maxItems`` of ``chargingSchedulePeriod`` in the OCPP 2.0.1 schema [-]."""

OCPP201_TRANSACTION_ID_MAX_LEN = 36
"""``maxLength`` of ``transactionId`` in the OCPP 2.0.1 schema [characters]."""

_ID_MODULUS = 2**31 - 1

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class ProfileError(GridchargeError, ValueError):
    """A charging profile cannot be built from the given inputs.

    Parameters
    ----------
    field : str
        The offending argument, e.g. ``current_a[3]`` or ``n_phases``.
    value : object
        The offending value.
    reason : str
        What is wrong with it.
    session_id : str or None
        The session the profile was for, when known.
    """

    def __init__(
        self, field: str, value: object, reason: str, session_id: str | None = None
    ) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.session_id = session_id
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        where = f"session {session_id!r}: " if session_id is not None else ""
        super().__init__(f"{where}{field}: {reason} (got {shown})")


def charging_profile_id(session_id: str) -> int:
    """Deterministic profile id of a session.

    ``int.from_bytes(sha256(session_id.encode("utf-8")).digest()[:8], "big") % (2**31 - 1) + 1``:
    the same session id gives the same id in every process and on every machine (unlike
    :func:`hash`, which is salted per process), so a re-optimised profile replaces the one sent
    before instead of stacking next to it.

    Parameters
    ----------
    session_id : str
        The session id.

    Returns
    -------
    int
        The profile id, in [1, 2**31 - 1] (a positive 32-bit signed integer).
    """
    if not isinstance(session_id, str) or not session_id:
        raise ProfileError("session_id", session_id, "must be a non-empty string")
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _ID_MODULUS + 1


def profile_limits_a(
    current_a: Sequence[float] | NDArray[Any],
    present: Sequence[bool] | NDArray[Any],
    min_current_a: float,
    pause_consent: bool,
) -> FloatArray:
    """Current limit to send to the charger in each grid step.

    For a present step with planned current ``i`` [A] and station minimum ``m`` [A]::

        limit = 0                                   if pause_consent and i <= ZERO_TOL_A
        limit = max(floor_0.1(i), ceil_0.1(m))      otherwise

    where ``floor_0.1`` rounds down and ``ceil_0.1`` rounds up to a multiple of 0.1 A. The limit
    is therefore never above the plan (except where the minimum lifts it) and, while the car is
    plugged in, never below the minimum: the car stops by itself when it is full, while a paused
    car may not resume. Steps where the session is not present get 0.

    Parameters
    ----------
    current_a : sequence of float
        Planned average current per phase in each grid step [A]; 0 where not present.
    present : sequence of bool
        Whether the session is plugged in during each grid step [-].
    min_current_a : float
        Station minimum current [A].
    pause_consent : bool
        Whether the driver agreed that the car may be paused.

    Returns
    -------
    numpy.ndarray of float
        Limit per grid step [A], each a multiple of 0.1 A.

    Raises
    ------
    ProfileError
        Lengths differ, a current is negative or not finite, a current is planned where the
        session is not present, or the minimum is not a positive number.
    """
    return _limit_tenths(current_a, present, min_current_a, pause_consent, None) / 10.0


def session_profiles(
    *,
    session_id: str,
    evse_id: int,
    start: datetime,
    step_s: int,
    current_a: Sequence[float] | NDArray[Any],
    present: Sequence[bool] | NDArray[Any],
    min_current_a: float,
    n_phases: int,
    pause_consent: bool,
    formats: Collection[str] = FORMATS,
    transaction_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Charging profiles of one session in OCPP 1.6, OCPP 2.0.1 and OCPI 2.2.1 form.

    The limits are those of :func:`profile_limits_a`. The profile is an absolute ``TxProfile``
    at stack level 0 that starts at the first present step and lasts ``duration`` =
    (number of present steps) · ``step_s``; consecutive steps with equal limits form one period.

    Parameters
    ----------
    session_id : str
        Session id; names the session in errors and fixes the profile id
        (:func:`charging_profile_id`).
    evse_id : int
        1-based connector index within its station (OCPP ``connectorId`` / ``evseId``) [-].
    start : datetime
        Start of the grid; timezone-aware, whole seconds.
    step_s : int
        Grid step [s].
    current_a : sequence of float
        Planned average current per phase in each grid step [A]; 0 where not present.
    present : sequence of bool
        Whether the session is plugged in during each grid step; one contiguous stay [-].
    min_current_a : float
        Station minimum current [A].
    n_phases : int
        Phases the session draws on (1 or 3) [-]; sent as ``numberPhases`` in OCPP.
    pause_consent : bool
        Whether the driver agreed that the car may be paused.
    formats : collection of str
        Which of ``"ocpp16"``, ``"ocpp201"``, ``"ocpi"`` to emit.
    transaction_id : str or None
        OCPP 2.0.1 ``transactionId`` (the charging station's id of the transaction; required
        for a ``TxProfile`` by OCPP 2.0.1 K01.FR.03; at most 36 characters). Defaults to
        ``session_id``.

    Returns
    -------
    dict
        ``{"ocpp16": SetChargingProfile.req payload, "ocpp201": SetChargingProfileRequest
        payload, "ocpi": ChargingProfile object}``, only the requested keys, in that order.

    Raises
    ------
    ProfileError
        The session is present at no step (callers skip such sessions), its presence is not one
        contiguous stay, or an argument is invalid (see :func:`profile_limits_a`); the message
        names the session, the field and the value.
    """
    if not isinstance(session_id, str) or not session_id:
        raise ProfileError("session_id", session_id, "must be a non-empty string")
    wanted = _check_formats(formats, session_id)
    evse = _check_choice_int("evse_id", evse_id, session_id, minimum=1)
    phases = _check_choice_int("n_phases", n_phases, session_id, allowed=(1, 3))
    step = _check_choice_int("step_s", step_s, session_id, minimum=1)
    start_utc = _check_start(start, session_id)
    tx_id = session_id if transaction_id is None else transaction_id
    if "ocpp201" in wanted:
        _check_transaction_id(tx_id, session_id)

    tenths = _limit_tenths(current_a, present, min_current_a, pause_consent, session_id)
    pres = _as_bool_array(present, session_id)
    idx = np.flatnonzero(pres)
    if idx.size == 0:
        raise ProfileError(
            "present", "no step", "the session is present at no step: no profile", session_id
        )
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 != idx.size:
        gap = int(idx[np.flatnonzero(np.diff(idx) > 1)[0]] + 1)
        raise ProfileError(
            f"present[{gap}]", False, "presence must be one contiguous stay", session_id
        )

    periods = _merge_periods(tenths[first : last + 1], step)
    if "ocpp201" in wanted and len(periods) > OCPP201_MAX_PERIODS:
        raise ProfileError(
            "chargingSchedulePeriod",
            len(periods),
            f"OCPP 2.0.1 allows at most {OCPP201_MAX_PERIODS} periods; use a coarser grid",
            session_id,
        )
    start_schedule = _iso_utc(start_utc + timedelta(seconds=first * step))
    duration_s = int(idx.size) * step
    min_rate_a = _tenths_to_float(_min_tenths(min_current_a, session_id))

    ocpi = {
        "start_date_time": start_schedule,
        "duration": duration_s,
        "charging_rate_unit": "A",
        "min_charging_rate": min_rate_a,
        "charging_profile_period": [
            {"start_period": s, "limit": _tenths_to_float(t)} for s, t in periods
        ],
    }
    ocpp = ocpp_forms(
        ocpi, session_id=session_id, evse_id=evse, n_phases=phases, transaction_id=tx_id
    )
    out: dict[str, dict[str, Any]] = {f: ocpp[f] for f in ("ocpp16", "ocpp201") if f in wanted}
    if "ocpi" in wanted:
        out["ocpi"] = ocpi
    return out


def ocpp_forms(
    ocpi: Mapping[str, Any],
    *,
    session_id: str,
    evse_id: int,
    n_phases: int,
    transaction_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The OCPP 1.6 and OCPP 2.0.1 forms of an OCPI ChargingProfile.

    The three forms carry the same schedule: an absolute ``TxProfile`` at stack level 0 with
    the profile id :func:`charging_profile_id` of ``session_id``, the OCPI start, duration,
    unit, minimum rate and periods, and ``numberPhases`` = ``n_phases`` in every period. Only
    the OCPI form and the two ids are stored; the OCPP forms are derived from them when they are
    read (:class:`api.models.Profile`).

    Parameters
    ----------
    ocpi : mapping
        OCPI 2.2.1 ChargingProfile (``start_date_time``, ``duration``, ``charging_rate_unit``,
        optional ``min_charging_rate``, ``charging_profile_period``).
    session_id : str
        Session id (the profile id, and the OCPP 2.0.1 ``transactionId`` by default).
    evse_id : int
        1-based connector index within its station (OCPP ``connectorId`` / ``evseId``) [-].
    n_phases : int
        Phases the session draws on (1 or 3) [-].
    transaction_id : str or None
        OCPP 2.0.1 ``transactionId``; defaults to ``session_id``.

    Returns
    -------
    dict
        ``{"ocpp16": SetChargingProfile.req payload, "ocpp201": SetChargingProfileRequest
        payload}``; the same JSON, key order included, as :func:`session_profiles` emits.
    """
    pid = charging_profile_id(session_id)
    periods = [
        {"startPeriod": p["start_period"], "limit": p["limit"], "numberPhases": n_phases}
        for p in ocpi["charging_profile_period"]
    ]
    start, duration, unit = ocpi["start_date_time"], ocpi["duration"], ocpi["charging_rate_unit"]
    rate = {"minChargingRate": ocpi["min_charging_rate"]} if "min_charging_rate" in ocpi else {}
    return {
        "ocpp16": {
            "connectorId": evse_id,
            "csChargingProfiles": {
                "chargingProfileId": pid,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "duration": duration,
                    "startSchedule": start,
                    "chargingRateUnit": unit,
                    "chargingSchedulePeriod": periods,
                    **rate,
                },
            },
        },
        "ocpp201": {
            "evseId": evse_id,
            "chargingProfile": {
                "id": pid,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [
                    {
                        "id": pid,
                        "startSchedule": start,
                        "duration": duration,
                        "chargingRateUnit": unit,
                        "chargingSchedulePeriod": [dict(p) for p in periods],
                        **rate,
                    }
                ],
                "transactionId": session_id if transaction_id is None else transaction_id,
            },
        },
    }


def ocpp_ids(forms: Mapping[str, Any], session_id: str) -> tuple[int, int]:
    """``(evse_id, n_phases)`` of a session's profile forms (:func:`session_profiles` with
    ``"ocpp16"`` and ``"ocpp201"``): with the OCPI form and the session id they are all
    :func:`ocpp_forms` needs. Raises :class:`ProfileError` when the OCPP 2.0.1
    ``transactionId`` is not the session id (it would not be given back)."""
    p16 = forms["ocpp16"]
    periods = p16["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    tx_id = forms["ocpp201"]["chargingProfile"]["transactionId"]
    if tx_id != session_id:
        raise ProfileError(
            "transactionId",
            tx_id,
            "only the session id is stored as the transaction id of a published profile",
            session_id,
        )
    return int(p16["connectorId"]), int(periods[0]["numberPhases"])


# --------------------------------------------------------------------------------------------
# helpers


def _limit_tenths(
    current_a: Sequence[float] | NDArray[Any],
    present: Sequence[bool] | NDArray[Any],
    min_current_a: float,
    pause_consent: bool,
    session_id: str | None,
) -> IntArray:
    """Limit per step in tenths of an ampere (the rule of :func:`profile_limits_a`)."""
    plan_a = _as_current_array(current_a, session_id)
    pres = _as_bool_array(present, session_id)
    if plan_a.shape != pres.shape:
        raise ProfileError(
            "current_a",
            f"{plan_a.size} values",
            f"must have one value per step like present ({pres.size} steps)",
            session_id,
        )
    outside = np.flatnonzero(~pres & (plan_a > ZERO_TOL_A))
    if outside.size:
        t = int(outside[0])
        raise ProfileError(
            f"current_a[{t}]",
            float(plan_a[t]),
            "current planned while the session is not present",
            session_id,
        )
    min_tenths = _min_tenths(min_current_a, session_id)
    plan_a = np.maximum(plan_a, 0.0)  # values in [-ZERO_TOL_A, 0) are solver noise
    plan_tenths = np.floor(plan_a * 10.0 + ROUND_TOL_A * 10.0).astype(np.int64)
    tenths = np.maximum(plan_tenths, min_tenths)
    if pause_consent:
        tenths[plan_a <= ZERO_TOL_A] = 0
    tenths[~pres] = 0
    return tenths


def _as_current_array(current_a: Any, session_id: str | None) -> FloatArray:
    try:
        arr = np.asarray(current_a, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError(
            "current_a", current_a, "must be a list of numbers", session_id
        ) from None
    if arr.ndim != 1:
        raise ProfileError("current_a", current_a, "must be a flat list of numbers", session_id)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        t = int(bad[0])
        raise ProfileError(f"current_a[{t}]", float(arr[t]), "must be finite", session_id)
    neg = np.flatnonzero(arr < -ZERO_TOL_A)
    if neg.size:
        t = int(neg[0])
        raise ProfileError(f"current_a[{t}]", float(arr[t]), "must not be negative", session_id)
    return arr


def _as_bool_array(present: Any, session_id: str | None) -> NDArray[np.bool_]:
    arr = np.asarray(present)
    if arr.ndim != 1:
        raise ProfileError("present", present, "must be a flat list of booleans", session_id)
    if arr.dtype == np.bool_:
        return arr
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    if np.issubdtype(arr.dtype, np.integer) and bool(np.isin(arr, (0, 1)).all()):
        return arr.astype(bool)
    raise ProfileError("present", present, "must be a list of booleans", session_id)


def _min_tenths(min_current_a: float, session_id: str | None) -> int:
    """Station minimum rounded *up* to 0.1 A, in tenths (the floor of every limit)."""
    if (
        isinstance(min_current_a, bool)
        or not isinstance(min_current_a, int | float | np.integer | np.floating)
        or not math.isfinite(min_current_a)
        or min_current_a <= 0
    ):
        raise ProfileError(
            "min_current_a", min_current_a, "must be a positive number of amperes", session_id
        )
    return math.ceil(float(min_current_a) * 10.0 - ROUND_TOL_A * 10.0)


def _check_choice_int(
    field: str,
    value: Any,
    session_id: str,
    *,
    minimum: int | None = None,
    allowed: tuple[int, ...] | None = None,
) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if ok and allowed is not None and int(value) not in allowed:
        ok = False
    if ok and minimum is not None and int(value) < minimum:
        ok = False
    if not ok:
        if allowed is not None:
            need = "must be one of " + ", ".join(str(a) for a in allowed)
        else:
            need = f"must be an integer >= {minimum}"
        raise ProfileError(field, value, need, session_id)
    return int(value)


def _check_start(start: Any, session_id: str) -> datetime:
    if not isinstance(start, datetime):
        raise ProfileError("start", start, "must be a datetime", session_id)
    if start.tzinfo is None or start.utcoffset() is None:
        raise ProfileError("start", start, "must be timezone-aware (UTC)", session_id)
    if start.microsecond:
        raise ProfileError("start", start, "must be a whole second", session_id)
    return start.astimezone(UTC)


def _check_formats(formats: Collection[str], session_id: str) -> frozenset[str]:
    wanted = (formats,) if isinstance(formats, str) else tuple(formats)
    for f in wanted:
        if f not in FORMATS:
            raise ProfileError(
                "formats",
                f,
                f"unknown profile format (choose from {', '.join(FORMATS)})",
                session_id,
            )
    return frozenset(wanted)


def _check_transaction_id(tx_id: Any, session_id: str) -> None:
    if not isinstance(tx_id, str) or not tx_id:
        raise ProfileError("transaction_id", tx_id, "must be a non-empty string", session_id)
    if len(tx_id) > OCPP201_TRANSACTION_ID_MAX_LEN:
        raise ProfileError(
            "transaction_id",
            tx_id,
            f"OCPP 2.0.1 allows at most {OCPP201_TRANSACTION_ID_MAX_LEN} characters; "
            "pass the station's transaction id",
            session_id,
        )


def _merge_periods(tenths: IntArray, step_s: int) -> list[tuple[int, int]]:
    """``(startPeriod [s], limit [0.1 A])`` where the limit changes; the first starts at 0."""
    change = np.flatnonzero(np.diff(tenths)) + 1
    starts = np.concatenate(([0], change))
    return [(int(k) * step_s, int(tenths[k])) for k in starts]


def _tenths_to_float(tenths: int) -> float:
    """``tenths / 10`` as the float whose shortest repr has one decimal (``125`` → ``12.5``)."""
    return float(tenths) / 10.0


def _iso_utc(t: datetime) -> str:
    """ISO-8601 UTC time with a ``Z`` designator, whole seconds (``2026-11-25T07:00:00Z``)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
