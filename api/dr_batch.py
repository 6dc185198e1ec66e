"""Curtailment profiles of a whole activation at once, as arrays (``docs/demand-response.md``,
"How it is written fast").

:func:`api.dr.curtailment_shape` and :func:`api.dr.render_shape` define one session's curtailment
profile: its minimum current from the signal until its restore time, then the limits of the
profile published before, to that profile's end. They are the reference. When every session has a
profile of its own (the optimiser's plan usually gives each session its own), running them once
per session costs tens of microseconds of Python per session. :func:`render_batch` computes the
same periods, durations, step limits, planned energy and "does it change anything" flags for all
sessions with numpy over the flattened periods of the published profiles, and builds the JSON
texts that are stored (the OCPI form and the step limits; the OCPP forms are derived from the
OCPI one when read) by joining per-period fragments encoded once per distinct value. The texts
are equal to the reference forms, key order included (tested on random profiles).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from api.bulk import dumps

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_KEY = np.int64(1) << np.int64(40)
"""Offsets [s] are below this; ``session · _KEY + offset`` orders periods by session, then time."""


@dataclass
class Batch:
    """Curtailment profiles of ``m`` sessions, in the order given to :func:`render_batch`.

    Attributes
    ----------
    changed : array of bool
        False where the published profile already holds these limits (the session is left alone).
    planned_kwh : list of float or None
        Energy the published profile allowed from the signal to its end [kWh] (None without one).
    duration_s : array of int
        Duration of each curtailment profile [s].
    ocpi, limits_a : list of str
        JSON texts of the OCPI form and of the step limits (the ``profiles`` columns).
    """

    changed: NDArray[np.bool_]
    planned_kwh: list[float | None]
    duration_s: IntArray
    ocpi: list[str]
    limits_a: list[str]


def _texts(values: FloatArray) -> list[str]:
    """JSON text of every value, each distinct value encoded once."""
    return _formatted((values,), dumps)


def _factorize(values: NDArray[Any]) -> tuple[IntArray, NDArray[Any]]:
    """``(codes, uniques)`` with ``uniques[codes] == values``, by hashing (no sort)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def _formatted(columns: tuple[NDArray[Any], ...], fmt: Callable[..., str]) -> list[str]:
    """``fmt(*row)`` for every row of ``columns`` (Python values), each distinct row formatted
    once."""
    n = columns[0].size
    if n == 0:
        return []
    code = np.zeros(n, dtype=np.int64)
    uniques = []
    for col in columns:
        inv, u = _factorize(col)
        code = code * u.size + inv
        uniques.append(u)
    inv, ucode = _factorize(code)
    parts = []
    rest = ucode
    for u in reversed(uniques):
        parts.append(u[rest % u.size].tolist())
        rest = rest // u.size
    parts.reverse()
    texts = np.array([fmt(*row) for row in zip(*parts, strict=True)], dtype=object)
    return cast(list[str], texts[inv].tolist())


def _join_groups(fragments: list[str], counts: IntArray) -> list[str]:
    """``"[" + ",".join(group) + "]"`` of consecutive groups of ``counts`` fragments."""
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]] if ends else []
    return ["[" + ",".join(fragments[a:b]) + "]" for a, b in zip(starts, ends, strict=True)]


@dataclass
class Published:
    """The published OCPI profiles of ``m`` sessions, flattened into arrays.

    Attributes
    ----------
    has : array of bool
        The session has a published profile with at least one period.
    start_s, end_s : array of float
        Start and end of each profile [s since the epoch] (0 where ``has`` is False).
    min_rate : array of float
        ``min_charging_rate`` [A] (0 where missing).
    rate_missing, unit_a : array of bool
        No ``min_charging_rate``; ``charging_rate_unit`` is ``"A"``.
    counts : array of int
        Periods of each profile.
    seg_off, seg_lim : array of float
        ``start_period`` [s] and ``limit`` of every period, session by session.
    """

    has: NDArray[np.bool_]
    start_s: FloatArray
    end_s: FloatArray
    min_rate: FloatArray
    rate_missing: NDArray[np.bool_]
    unit_a: NDArray[np.bool_]
    counts: IntArray
    seg_off: FloatArray
    seg_lim: FloatArray

    @property
    def m(self) -> int:
        return int(self.has.size)


class Flat(NamedTuple):
    """One published OCPI profile with at least one period, flattened (what :class:`Published`
    holds of it): start [s since the epoch], duration [s] as decoded, ``min_charging_rate``
    (None: missing), whether the unit is ``"A"``, and the ``start_period`` and ``limit`` of
    every period."""

    start_s: float
    duration_s: Any
    min_rate: float | None
    unit_a: bool
    offsets: list[float]
    limits: list[float]


_START_PERIOD = itemgetter("start_period")
_LIMIT = itemgetter("limit")


def flatten(previous: Sequence[Mapping[str, Any] | None]) -> list[Flat | None]:
    """:class:`Flat` of decoded OCPI profiles (None where there is none or it has no period).
    Numbers stay as decoded (ints or floats); :func:`published_from_flat` makes them floats."""
    stamps: dict[str, float] = {}
    out: list[Flat | None] = []
    append = out.append
    for prev in previous:
        periods = None if prev is None else prev["charging_profile_period"]
        if not periods:
            append(None)
            continue
        assert prev is not None
        stamp = prev["start_date_time"]
        p0 = stamps.get(stamp)
        if p0 is None:
            p0 = stamps[stamp] = datetime.fromisoformat(stamp).timestamp()
        append(
            Flat(
                p0,
                prev["duration"],
                prev.get("min_charging_rate"),
                prev.get("charging_rate_unit") == "A",
                list(map(_START_PERIOD, periods)),
                list(map(_LIMIT, periods)),
            )
        )
    return out


def _published(
    m: int,
    at: list[int],
    start_s: Sequence[float],
    durations: Sequence[Any],
    rates: Sequence[float | None],
    units: Sequence[bool],
    counts: Sequence[int],
    offsets: Sequence[float],
    limits: Sequence[float],
) -> Published:
    """:class:`Published` of ``m`` sessions from the fields of those with a profile (at ``at``),
    given as plain lists: one numpy assignment per field."""
    has = np.zeros(m, dtype=bool)
    p_start = np.zeros(m)
    p_end = np.zeros(m)
    p_rate = np.zeros(m)
    rate_missing = np.zeros(m, dtype=bool)
    unit_a = np.zeros(m, dtype=bool)
    n = np.zeros(m, dtype=np.int64)
    if at:
        where = np.array(at, dtype=np.int64)
        has[where] = True
        p_start[where] = start_s
        p_end[where] = p_start[where] + np.array(durations, dtype=np.float64)
        rate_missing[where] = [r is None for r in rates]
        p_rate[where] = [0.0 if r is None else float(r) for r in rates]
        unit_a[where] = units
        n[where] = counts
    seg_off = np.array(offsets, dtype=np.float64)
    seg_lim = np.array(limits, dtype=np.float64)
    return Published(has, p_start, p_end, p_rate, rate_missing, unit_a, n, seg_off, seg_lim)


def published_from_flat(flat: Sequence[Flat | None]) -> Published:
    """:class:`Published` of flattened profiles (None: none published)."""
    at = [k for k, f in enumerate(flat) if f is not None]
    if not at:
        return _published(len(flat), [], [], [], [], [], [], [], [])
    present = cast(list[Flat], [flat[k] for k in at])
    start, durations, rates, units, offs, lims = zip(*present, strict=True)
    return _published(
        len(flat),
        at,
        start,
        durations,
        rates,
        units,
        list(map(len, offs)),
        list(chain.from_iterable(offs)),
        list(chain.from_iterable(lims)),
    )


def published_from_dicts(previous: Sequence[Mapping[str, Any] | None]) -> Published:
    """:class:`Published` of decoded OCPI profiles (None: none published); the same as
    :func:`published_from_flat` of :func:`flatten`, in one pass (faster when nothing is cached)."""
    stamps: dict[str, float] = {}
    at: list[int] = []
    starts: list[float] = []
    durations: list[Any] = []
    rates: list[Any] = []
    units: list[bool] = []
    n_periods: list[int] = []
    period_lists: list[list[dict[str, Any]]] = []
    for k, prev in enumerate(previous):
        if prev is None:
            continue
        periods = prev["charging_profile_period"]
        if not periods:
            continue
        stamp = prev["start_date_time"]
        p0 = stamps.get(stamp)
        if p0 is None:
            p0 = stamps[stamp] = datetime.fromisoformat(stamp).timestamp()
        at.append(k)
        starts.append(p0)
        durations.append(prev["duration"])
        rates.append(prev.get("min_charging_rate"))
        units.append(prev.get("charging_rate_unit") == "A")
        n_periods.append(len(periods))
        period_lists.append(periods)
    flat = list(chain.from_iterable(period_lists))
    return _published(
        len(previous),
        at,
        starts,
        durations,
        rates,
        units,
        n_periods,
        list(map(_START_PERIOD, flat)),
        list(map(_LIMIT, flat)),
    )


def render_batch(
    *,
    start: datetime,
    until_s: FloatArray,
    limit_a: FloatArray,
    n_phases: IntArray,
    previous: Sequence[Mapping[str, Any] | None] | Published,
    voltage_v: float,
    step_s: int,
) -> Batch:
    """The curtailment profiles of ``m`` sessions (the same as :func:`api.dr.render_shape` per
    session, filled with its ids).

    Parameters
    ----------
    start : datetime
        The signal time (aware); every profile starts then.
    until_s : array
        Restore time of every session [s since the epoch].
    limit_a : array
        Curtailment limit (the station minimum) [A]; rounded to 0.1 A as in the reference.
    n_phases : array of int
        Phases of every session (planned energy).
    previous : sequence of dict or None, or Published
        The published OCPI profile of every session (None: none published), or all of them
        flattened (:func:`published_from_dicts`).
    voltage_v : float
        Phase voltage [V] (planned energy).
    step_s : int
        Scheduling step [s] (``limits_a``).
    """
    m = len(n_phases)
    t0 = start.timestamp()
    # rounded as Python rounds (correctly, in decimal), each distinct limit once
    inv, distinct = _factorize(np.asarray(limit_a, dtype=np.float64))
    limit = np.array([round(float(x), 1) for x in distinct.tolist()], dtype=np.float64)[inv]
    until = np.asarray(until_s, dtype=np.float64)
    phases = np.asarray(n_phases, dtype=np.int64)
    # the published profiles, flattened
    pub = previous if isinstance(previous, Published) else published_from_dicts(previous)
    if pub.m != m:
        raise ValueError(f"previous: {pub.m} published profiles for {m} sessions")
    has, p_start, p_end = pub.has, pub.start_s, pub.end_s
    p_rate, rate_missing, unit_a, counts = pub.min_rate, pub.rate_missing, pub.unit_a, pub.counts
    seg_off, seg_lim = pub.seg_off, pub.seg_lim
    seg_of = np.repeat(np.arange(m, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # index of each session's first segment
    seg_s = p_start[seg_of] + np.asarray(seg_off, dtype=np.float64)
    seg_l = np.asarray(seg_lim, dtype=np.float64)
    seg_next = np.empty_like(seg_s)
    if seg_s.size:
        seg_next[:-1] = seg_s[1:]
        last = first + counts - 1
        seg_next[last[has]] = p_end[has]

    # periods: the limit from the signal, then the published segments after the restore time
    extends = has & (p_end > until)
    tail = (seg_next > until[seg_of]) & extends[seg_of]
    t_of = seg_of[tail]
    t_off = np.round(np.maximum(seg_s[tail], until[t_of]) - t0).astype(np.int64)
    t_lim = seg_l[tail]
    prev_lim = np.empty_like(t_lim)
    if t_lim.size:
        prev_lim[1:] = t_lim[:-1]
        prev_lim[0] = limit[t_of[0]]
        new_group = np.ones(t_lim.size, dtype=bool)
        new_group[1:] = t_of[1:] != t_of[:-1]
        prev_lim[new_group] = limit[t_of[new_group]]
    keep = t_lim != prev_lim
    t_of, t_off, t_lim = t_of[keep], t_off[keep], t_lim[keep]
    per_of = np.concatenate([np.arange(m, dtype=np.int64), t_of])
    per_off = np.concatenate([np.zeros(m, dtype=np.int64), t_off])
    per_lim = np.concatenate([limit, t_lim])
    order = np.argsort(per_of * _KEY + per_off, kind="stable")
    per_of, per_off, per_lim = per_of[order], per_off[order], per_lim[order]
    n_per = np.bincount(per_of, minlength=m)

    end_s = np.where(extends, p_end, until)
    duration = np.round(end_s - t0).astype(np.int64)
    min_rate = np.where(has & ~rate_missing, p_rate, limit)

    # limits_a: the limit of every step from the start
    n_steps = duration // step_s
    step_of = np.repeat(np.arange(m, dtype=np.int64), n_steps)
    step_j = np.arange(step_of.size, dtype=np.int64) - np.repeat(
        np.cumsum(n_steps) - n_steps, n_steps
    )
    pos = np.searchsorted(per_of * _KEY + per_off, step_of * _KEY + step_j * step_s, "right") - 1
    step_lim = per_lim[pos]

    # energy the published profile allowed from the signal to its end [kWh]
    a = np.maximum(seg_s, t0)
    ok = seg_next > a
    v = float(voltage_v)
    energy = seg_l * phases[seg_of] * v / 1000.0 * (seg_next - a) / 3600.0
    kwh = np.bincount(seg_of[ok], weights=energy[ok], minlength=m)
    planned: list[float | None] = [
        float(x) if h else None for x, h in zip(kwh.tolist(), has.tolist(), strict=True)
    ]

    # changed: not when the published profile already holds the limit over the first period
    firsts = np.cumsum(n_per) - n_per
    t1 = t0 + np.where(n_per > 1, per_off[np.minimum(firsts + 1, per_off.size - 1)], duration)
    overlap = (seg_next > t0) & (seg_s < t1[seg_of]) & (seg_l != limit[seg_of])
    differs = np.bincount(seg_of[overlap], minlength=m) > 0
    starts_late = np.zeros(m, dtype=bool)
    starts_late[has] = seg_s[first[has]] > t0
    changed = ~has | rate_missing | ~unit_a | starts_late | (p_end != t0 + duration) | differs

    # texts
    stamp = start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ocpi_periods = _join_groups(
        _formatted((per_off, per_lim), lambda o, x: f'{{"start_period":{o},"limit":{dumps(x)}}}'),
        n_per,
    )
    limits_a = _join_groups(_texts(step_lim), n_steps)
    rates = _texts(min_rate)
    durations = duration.tolist()
    ocpi = [
        f'{{"start_date_time":"{stamp}","duration":{d},"charging_rate_unit":"A",'
        f'"min_charging_rate":{r},"charging_profile_period":{p}}}'
        for d, r, p in zip(durations, rates, ocpi_periods, strict=True)
    ]
    return Batch(
        changed=changed,
        planned_kwh=planned,
        duration_s=duration,
        ocpi=ocpi,
        limits_a=limits_a,
    )
