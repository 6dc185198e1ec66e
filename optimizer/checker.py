"""Independent schedule checker: re-simulate a schedule and test every rule of ``docs/formats.md``.

Independence is the point of this module. It imports nothing from the rest of gridcharge (only
the standard library and numpy): it parses the raw scenario and schedule JSON dicts itself,
applies the scenario defaults itself, puts the sessions on the grid itself and re-integrates the
energy itself. A bug in the scenario model, the network compiler or an optimiser therefore cannot
hide by being repeated here.

The checks are vectorised: one ``sessions × steps`` current matrix, group sums per station with
``numpy.add.at`` and a bottom-up pass over the node tree, one depth level at a time.

Conventions of the result (see :class:`Violation`):

- station and node per-phase limits name the phase in the subject: ``"<id>:L1"``;
- ``report_mismatch`` of a session's ``energy_kwh`` has subject ``"<session>"`` and of its
  ``unmet_kwh`` subject ``"<session>:unmet_kwh"`` (both whole-session, ``step`` None, unit kWh);
  of a node's or station's ``power_kw`` subject ``"<id>"`` with the step and unit kW (``step``
  None when the entry is missing or not a list of ``steps`` numbers);
- a ``current_a`` that is missing, has the wrong length or holds a non-number is a ``length``
  violation; the checker then continues with the missing or bad values taken as 0 A;
- a schedule ``grid`` that differs from the scenario's is a ``length`` violation with subject
  ``"grid"`` (a schedule without ``grid`` is not flagged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

ATOL_A = 1e-3
"""Absolute tolerance on currents [A]."""
ATOL_KW = 1e-3
"""Absolute tolerance on powers [kW]."""
ATOL_KWH = 1e-3
"""Absolute tolerance on energies [kWh]."""
RTOL = 1e-6
"""Relative tolerance [-], added to the absolute one."""

DEFAULT_VOLTAGE_V = 230.0
DEFAULT_STATION_LIMIT_A = 25.0
DEFAULT_MIN_CURRENT_A = 8.0
DEFAULT_CONNECTOR_LIMIT_A = 16.0
DEFAULT_STAY_H = 4.0
PHASES = ("L1", "L2", "L3")

NODE_KINDS = frozenset({"station_phase_limit", "node_phase_limit", "node_power_limit", "dso_cap"})
"""Kinds whose subject is a node or station (``"node"`` key in :meth:`Violation.to_dict`)."""

EXPLAINABLE_KINDS = frozenset(
    {
        "connector_limit",
        "station_phase_limit",
        "node_phase_limit",
        "node_power_limit",
        "dso_cap",
        "min_current",
        "opt_out",
        "pause_current",
    }
)
"""Kinds a schedule may declare in its own ``violations`` list (an infeasible limit)."""

_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    Attributes
    ----------
    kind : str
        Rule name from the table in ``docs/formats.md`` (``"dso_cap"``, ``"min_current"``, ...).
    subject : str
        Session, station or node id; ``"<id>:L1"`` for per-phase limits.
    step : int or None
        Grid step, or None for whole-session rules.
    amount : float
        Size of the breach [unit], >= 0.
    unit : str
        ``"A"``, ``"kW"``, ``"kWh"`` or ``""``.
    """

    kind: str
    subject: str
    step: int | None
    amount: float
    unit: str

    @property
    def is_node_rule(self) -> bool:
        """True when the subject is a node or station rather than a session."""
        return self.kind in NODE_KINDS or (self.kind == "report_mismatch" and self.unit == "kW")

    def to_dict(self) -> dict[str, Any]:
        """The schedule-file form ``{kind, node or session, step, amount, unit}``."""
        key = "node" if self.is_node_rule else "session"
        return {
            "kind": self.kind,
            key: self.subject,
            "step": self.step,
            "amount": self.amount,
            "unit": self.unit,
        }


def _tol(atol: float, value: FloatArray | float) -> FloatArray | float:
    """Tolerance ``atol + RTOL·|value|`` [unit of value]."""
    return atol + RTOL * np.abs(value)


# --------------------------------------------------------------------------------------------
# Parsing (raw dicts; the checker applies the defaults of docs/formats.md itself)
# --------------------------------------------------------------------------------------------


def parse_time(value: Any, field: str = "time") -> datetime:
    """Parse an ISO-8601 time with offset (``...+01:00`` or ``...Z``) into an aware datetime.

    Raises
    ------
    ValueError
        When the value is not a string, not ISO-8601 or has no offset.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field}={value!r}: not an ISO-8601 string")
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{field}={value!r}: time without offset")
    return dt


def _step_us(step_s: Any) -> int:
    """Step length [µs] as an exact integer."""
    if isinstance(step_s, bool) or not isinstance(step_s, int | float) or not step_s > 0:
        raise ValueError(f"grid.step_s={step_s!r}: must be a number > 0")
    if isinstance(step_s, int):
        return step_s * 1_000_000
    return round(step_s * 1_000_000)


def presence_window(
    arrival: datetime, departure: datetime, start: datetime, step_us: int, steps: int
) -> tuple[int, int]:
    """Present steps ``[first, end)`` of a stay, with arrival rounded up, departure down.

    ``a = ceil((arrival − start) / step)``, ``d = floor((departure − start) / step)``, then
    ``[max(a, 0), min(d, steps))``; an empty window has ``first == end``. Offsets are exact
    integer microseconds between aware datetimes, so there is no float rounding.

    Parameters
    ----------
    arrival, departure, start : datetime
        Aware datetimes (any offsets).
    step_us : int
        Step length [µs].
    steps : int
        Number of grid steps.

    Returns
    -------
    tuple[int, int]
        ``(first, end)`` step indices.
    """
    off_a = (arrival - start) // _US
    off_d = (departure - start) // _US
    a = -((-off_a) // step_us)
    d = off_d // step_us
    first = min(max(a, 0), steps)
    end = max(min(d, steps), first)
    return first, end


def _per_step(value: Any, steps: int, field: str) -> FloatArray:
    """A limit given as one number or one value per step, as a ``steps`` array."""
    if isinstance(value, list | tuple):
        if len(value) != steps:
            raise ValueError(f"{field}: list of {len(value)}, expected {steps}")
        return np.asarray(value, dtype=float)
    return np.full(steps, float(value))


@dataclass
class _Scenario:
    """A scenario as arrays; sessions ``s``, stations ``k``, nodes ``n`` in file order."""

    steps: int
    step_s: float
    step_us: int
    start: datetime
    voltage_v: float
    node_ids: list[str]
    node_parent: IntArray  # parent node index, -1 for a root
    node_depth: IntArray
    node_limit_kw: dict[int, FloatArray]  # [kW]
    node_limit_a: dict[int, FloatArray]  # [A] per phase
    station_ids: list[str]
    station_node: IntArray
    station_limit_a: FloatArray  # stations × steps [A] per phase
    station_min_a: FloatArray  # [A]
    session_ids: list[str]
    session_station: IntArray
    conn_limit_a: FloatArray  # [A]
    n_phases: FloatArray  # phases drawn on, 1 or 3
    draws: BoolArray  # sessions × 3, True on L1/L2/L3 drawn on
    first: IntArray
    end: IntArray
    need_kwh: FloatArray  # NaN when the car takes all it gets
    opt_out: BoolArray
    pause_consent: BoolArray
    dso_caps: list[tuple[int, FloatArray]]  # (node index, cap [kW] per step)
    session_cap_a: FloatArray | None = None  # sessions × steps [A]; inf where none; None: none

    @property
    def dt_h(self) -> float:
        return self.step_s / 3600.0

    @property
    def kw_per_a(self) -> FloatArray:
        """[kW/A] power per ampere of each session, ``n_s · V / 1000``."""
        return self.n_phases * self.voltage_v / 1000.0


def _depths(parent: list[int], ids: list[str]) -> list[int]:
    depth = [-1] * len(parent)
    for n in range(len(parent)):
        chain = []
        p = n
        while p != -1 and depth[p] < 0:
            if p in chain:
                raise ValueError(f"nodes: cycle through {ids[p]!r}")
            chain.append(p)
            p = parent[p]
        base = -1 if p == -1 else depth[p]
        for q in reversed(chain):
            base += 1
            depth[q] = base
    return depth


def _parse_scenario(data: Mapping[str, Any]) -> _Scenario:
    grid = data["grid"]
    steps = int(grid["steps"])
    if steps <= 0:
        raise ValueError(f"grid.steps={steps}: must be > 0")
    step_us = _step_us(grid["step_s"])
    start = parse_time(grid["start"], "grid.start")
    voltage_v = float(data.get("voltage_v", DEFAULT_VOLTAGE_V))

    nodes = list(data.get("nodes") or [])
    node_ids = [str(n["id"]) for n in nodes]
    node_index = {nid: i for i, nid in enumerate(node_ids)}
    parent: list[int] = []
    for n in nodes:
        p = n.get("parent")
        if p is not None and p not in node_index:
            raise ValueError(f"node {n['id']!r}: unknown parent {p!r}")
        parent.append(-1 if p is None else node_index[p])
    depth = _depths(parent, node_ids)
    node_limit_kw: dict[int, FloatArray] = {}
    node_limit_a: dict[int, FloatArray] = {}
    for i, n in enumerate(nodes):
        if n.get("limit_kw") is not None:
            node_limit_kw[i] = _per_step(n["limit_kw"], steps, f"nodes[{i}].limit_kw")
        if n.get("limit_a") is not None:
            node_limit_a[i] = _per_step(n["limit_a"], steps, f"nodes[{i}].limit_a")

    stations = list(data.get("stations") or [])
    station_ids: list[str] = []
    station_node: list[int] = []
    station_limit = np.zeros((len(stations), steps))
    station_min: list[float] = []
    # connector id -> (station index, limit_a, phases, phase index)
    connectors: dict[str, tuple[int, float, int, int]] = {}
    for k, st in enumerate(stations):
        sid = str(st["id"])
        station_ids.append(sid)
        if st["node"] not in node_index:
            raise ValueError(f"station {sid!r}: unknown node {st['node']!r}")
        station_node.append(node_index[st["node"]])
        station_limit[k] = _per_step(
            st.get("limit_a", DEFAULT_STATION_LIMIT_A), steps, f"stations[{k}].limit_a"
        )
        station_min.append(float(st.get("min_current_a", DEFAULT_MIN_CURRENT_A)))
        conns = st.get("connectors")
        if conns is None:
            conns = [{"id": f"{sid}-1"}, {"id": f"{sid}-2"}]
        for c in conns:
            connectors[str(c["id"])] = (
                k,
                float(c.get("limit_a", DEFAULT_CONNECTOR_LIMIT_A)),
                int(c.get("phases", 3)),
                PHASES.index(c.get("phase", "L1")),
            )

    sessions = list(data.get("sessions") or [])
    n_s = len(sessions)
    session_station = np.zeros(n_s, dtype=np.intp)
    conn_limit = np.zeros(n_s)
    n_phases = np.zeros(n_s)
    draws = np.zeros((n_s, 3), dtype=bool)
    first = np.zeros(n_s, dtype=np.intp)
    end = np.zeros(n_s, dtype=np.intp)
    need = np.full(n_s, np.nan)
    opt_out = np.zeros(n_s, dtype=bool)
    pause = np.zeros(n_s, dtype=bool)
    session_cap: FloatArray | None = None
    session_ids: list[str] = []
    for s, ses in enumerate(sessions):
        session_ids.append(str(ses["id"]))
        if ses["connector"] not in connectors:
            raise ValueError(f"session {ses['id']!r}: unknown connector {ses['connector']!r}")
        k, limit_a, conn_phases, phase = connectors[ses["connector"]]
        session_station[s] = k
        conn_limit[s] = limit_a
        n = min(int(ses.get("phases", 3)), conn_phases)
        n_phases[s] = n
        if n == 3:
            draws[s, :] = True
        else:
            draws[s, phase] = True
        arrival = parse_time(ses["arrival"], f"sessions[{s}].arrival")
        dep = ses.get("departure")
        departure = (
            arrival + timedelta(hours=DEFAULT_STAY_H)
            if dep is None
            else parse_time(dep, f"sessions[{s}].departure")
        )
        first[s], end[s] = presence_window(arrival, departure, start, step_us, steps)
        if ses.get("energy_kwh") is not None:
            need[s] = float(ses["energy_kwh"])
        opt_out[s] = bool(ses.get("opt_out", False))
        pause[s] = bool(ses.get("pause_consent", False))
        if ses.get("limit_a") is not None:
            if session_cap is None:
                session_cap = np.full((n_s, steps), np.inf)
            session_cap[s] = _per_step(ses["limit_a"], steps, f"sessions[{s}].limit_a")

    dso_caps: list[tuple[int, FloatArray]] = []
    for j, prof in enumerate(data.get("dso_profiles") or []):
        if prof.get("cap_kw") is None:
            continue
        if prof["node"] not in node_index:
            raise ValueError(f"dso_profiles[{j}]: unknown node {prof['node']!r}")
        dso_caps.append(
            (node_index[prof["node"]], _per_step(prof["cap_kw"], steps, f"dso_profiles[{j}]"))
        )

    return _Scenario(
        steps=steps,
        step_s=step_us / 1e6,
        step_us=step_us,
        start=start,
        voltage_v=voltage_v,
        node_ids=node_ids,
        node_parent=np.asarray(parent, dtype=np.intp),
        node_depth=np.asarray(depth, dtype=np.intp),
        node_limit_kw=node_limit_kw,
        node_limit_a=node_limit_a,
        station_ids=station_ids,
        station_node=np.asarray(station_node, dtype=np.intp),
        station_limit_a=station_limit,
        station_min_a=np.asarray(station_min, dtype=float),
        session_ids=session_ids,
        session_station=session_station,
        conn_limit_a=conn_limit,
        n_phases=n_phases,
        draws=draws,
        first=first,
        end=end,
        need_kwh=need,
        opt_out=opt_out,
        pause_consent=pause,
        dso_caps=dso_caps,
        session_cap_a=session_cap,
    )


def _as_steps(value: Any, steps: int) -> tuple[FloatArray, int] | None:
    """A per-step list as floats with non-numbers as 0, and the count of bad entries.

    None when ``value`` is not a list of ``steps`` entries.
    """
    if not isinstance(value, list | tuple) or len(value) != steps:
        return None
    try:
        arr = np.asarray(value, dtype=float)  # None becomes NaN
    except (TypeError, ValueError):
        arr = np.asarray(
            [
                v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan
                for v in value
            ],
            dtype=float,
        )
    bad = ~np.isfinite(arr)
    return np.where(bad, 0.0, arr), int(bad.sum())


def _current_matrix(
    sc: _Scenario, schedule: Mapping[str, Any]
) -> tuple[FloatArray, list[Violation]]:
    """The ``sessions × steps`` current [A] of the schedule, and its ``length`` violations."""
    steps = sc.steps
    out: list[Violation] = []
    entries = schedule.get("sessions") or {}
    current = np.zeros((len(sc.session_ids), steps))
    for s, sid in enumerate(sc.session_ids):
        entry = entries.get(sid)
        if not isinstance(entry, Mapping):
            out.append(Violation("length", sid, None, float(steps), ""))
            continue
        raw = entry.get("current_a")
        parsed = _as_steps(raw, steps)
        if parsed is None:
            n = len(raw) if isinstance(raw, list | tuple) else 0
            out.append(Violation("length", sid, None, float(abs(n - steps)), ""))
            if isinstance(raw, list | tuple):  # keep what can be kept: truncate / pad with 0
                fixed = _as_steps(list(raw[:steps]) + [0.0] * max(0, steps - n), steps)
                if fixed is not None:
                    current[s] = fixed[0]
            continue
        current[s], bad = parsed
        if bad:
            out.append(Violation("length", sid, None, float(bad), ""))
    known = set(sc.session_ids)
    for sid, entry in entries.items():
        if sid not in known:
            raw = entry.get("current_a") if isinstance(entry, Mapping) else None
            n = len(raw) if isinstance(raw, list | tuple) else 0
            out.append(Violation("length", str(sid), None, float(n), ""))
    return current, out


def _check_grid(sc: _Scenario, schedule: Mapping[str, Any]) -> list[Violation]:
    grid = schedule.get("grid")
    if grid is None:
        return []
    try:
        same = (
            int(grid["steps"]) == sc.steps
            and _step_us(grid["step_s"]) == sc.step_us
            and parse_time(grid["start"], "schedule.grid.start") == sc.start
        )
        steps_diff = abs(int(grid["steps"]) - sc.steps)
    except (KeyError, TypeError, ValueError):
        same, steps_diff = False, 0
    return [] if same else [Violation("length", "grid", None, float(steps_diff), "")]


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def _presence(sc: _Scenario) -> BoolArray:
    """``sessions × steps``: True where the session is present."""
    t = np.arange(sc.steps)
    present: BoolArray = (t >= sc.first[:, None]) & (t < sc.end[:, None])
    return present


def _group_sum(values: FloatArray, group: IntArray, n_groups: int) -> FloatArray:
    """Sum the rows of ``values`` by ``group`` index into ``n_groups`` rows."""
    out = np.zeros((n_groups, *values.shape[1:]))
    np.add.at(out, group, values)
    return out


def _up_the_tree(sc: _Scenario, per_station: FloatArray) -> FloatArray:
    """Per-node sums over all stations below each node (transitively).

    ``X_n = Σ_{k: node(k) = n} x_k + Σ_{c: parent(c) = n} X_c``, built deepest level first.
    """
    agg = _group_sum(per_station, sc.station_node, len(sc.node_ids))
    if len(sc.node_ids) == 0:
        return agg
    for d in range(int(sc.node_depth.max()), 0, -1):
        idx = np.flatnonzero(sc.node_depth == d)
        np.add.at(agg, sc.node_parent[idx], agg[idx])
    return agg


def _from_mask(
    kind: str, subjects: Sequence[str], mask: BoolArray, amount: FloatArray, unit: str
) -> list[Violation]:
    rows, cols = np.nonzero(mask)
    amounts = amount[rows, cols].tolist()
    return [
        Violation(kind, subjects[r], c, a, unit)
        for r, c, a in zip(rows.tolist(), cols.tolist(), amounts, strict=True)
    ]


def _over(
    kind: str, subjects: Sequence[str], value: FloatArray, limit: FloatArray, atol: float, unit: str
) -> list[Violation]:
    """Violations where ``value > limit`` beyond tolerance; amount = ``value − limit``."""
    excess = value - limit
    return _from_mask(kind, subjects, excess > _tol(atol, limit), excess, unit)


def _under(
    kind: str,
    subjects: Sequence[str],
    value: FloatArray,
    floor: FloatArray,
    where: BoolArray,
    unit: str,
) -> list[Violation]:
    """Violations where ``value < floor`` beyond tolerance (only in ``where``)."""
    short = floor - value
    return _from_mask(kind, subjects, where & (short > _tol(ATOL_A, floor)), short, unit)


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def _check_session_currents(sc: _Scenario, i_a: FloatArray, present: BoolArray) -> list[Violation]:
    """``not_present``, ``negative_current``, ``connector_limit`` and ``session_limit``."""
    ids = sc.session_ids
    out = _from_mask("not_present", ids, ~present & (np.abs(i_a) > ATOL_A), np.abs(i_a), "A")
    out += _from_mask("negative_current", ids, i_a < -ATOL_A, -i_a, "A")
    limit = np.broadcast_to(sc.conn_limit_a[:, None], i_a.shape)
    out += _over("connector_limit", ids, i_a, limit, ATOL_A, "A")
    if sc.session_cap_a is not None:
        out += _over("session_limit", ids, i_a, sc.session_cap_a, ATOL_A, "A")
    return out


def _check_phase_limits(sc: _Scenario, i_a: FloatArray) -> list[Violation]:
    """``station_phase_limit`` and ``node_phase_limit`` on each of L1, L2, L3.

    ``Σ_{s ∈ group, s draws on φ} i_s(t) ≤ limit(t)`` for every group and phase φ.
    """
    steps = sc.steps
    per_phase = i_a[:, None, :] * sc.draws[:, :, None]  # sessions × 3 × steps
    st_phase = _group_sum(per_phase, sc.session_station, len(sc.station_ids))
    subjects = [f"{k}:{ph}" for k in sc.station_ids for ph in PHASES]
    limit = np.repeat(sc.station_limit_a, 3, axis=0)
    out = _over("station_phase_limit", subjects, st_phase.reshape(-1, steps), limit, ATOL_A, "A")
    if sc.node_limit_a:
        node_phase = _up_the_tree(sc, st_phase)
        idx = sorted(sc.node_limit_a)
        subjects = [f"{sc.node_ids[n]}:{ph}" for n in idx for ph in PHASES]
        limit = np.repeat(np.stack([sc.node_limit_a[n] for n in idx]), 3, axis=0)
        value = node_phase[idx].reshape(-1, steps)
        out += _over("node_phase_limit", subjects, value, limit, ATOL_A, "A")
    return out


def _check_power_limits(sc: _Scenario, node_kw: FloatArray) -> list[Violation]:
    """``node_power_limit`` and ``dso_cap``: ``Σ_{s below n} p_s(t) ≤ limit(t)`` [kW]."""
    out: list[Violation] = []
    if sc.node_limit_kw:
        idx = sorted(sc.node_limit_kw)
        limit = np.stack([sc.node_limit_kw[n] for n in idx])
        subjects = [sc.node_ids[n] for n in idx]
        out += _over("node_power_limit", subjects, node_kw[idx], limit, ATOL_KW, "kW")
    if sc.dso_caps:
        idx = [n for n, _ in sc.dso_caps]
        limit = np.stack([cap for _, cap in sc.dso_caps])
        subjects = [sc.node_ids[n] for n in idx]
        out += _over("dso_cap", subjects, node_kw[idx], limit, ATOL_KW, "kW")
    return out


def _check_energy_and_minimum(
    sc: _Scenario, i_a: FloatArray, present: BoolArray
) -> list[Violation]:
    """``energy_exceeded``, ``min_current``, ``opt_out`` and ``pause_current``.

    ``E_t`` is the energy before step ``t``; a session is *full at the start* of ``t`` when
    ``E_t ≥ need`` and *becomes full* in ``t`` when ``E_{t+1} ≥ need`` (within tolerance). A
    session without a need is never full. The minimum applies to present steps that are not
    full at the start, except the step in which the car becomes full.
    """
    ids = sc.session_ids
    e_step = i_a * (sc.kw_per_a * sc.dt_h)[:, None]  # [kWh]
    e_after = np.cumsum(e_step, axis=1)
    e_before = np.zeros_like(e_after)
    e_before[:, 1:] = e_after[:, :-1]
    has_need = ~np.isnan(sc.need_kwh)
    need = np.where(has_need, sc.need_kwh, np.inf)[:, None]
    tol_e = ATOL_KWH + RTOL * np.where(has_need, sc.need_kwh, 0.0)[:, None]
    not_full = e_before < need - tol_e
    becomes_full = e_after >= need - tol_e
    must_charge = present & not_full & ~becomes_full

    out: list[Violation] = []
    total = e_after[:, -1]
    excess = total - sc.need_kwh
    for s in np.flatnonzero(has_need & (excess > tol_e[:, 0])).tolist():
        out.append(Violation("energy_exceeded", ids[s], None, float(excess[s]), "kWh"))

    min_a = np.broadcast_to(sc.station_min_a[sc.session_station][:, None], i_a.shape)
    no_pause = must_charge & ~sc.pause_consent[:, None]
    out += _under("min_current", ids, i_a, min_a, no_pause, "A")

    paused = np.abs(i_a) <= ATOL_A
    pausing = present & sc.pause_consent[:, None] & ~becomes_full & ~paused
    out += _under("pause_current", ids, i_a, min_a, pausing, "A")

    if sc.opt_out.any():
        out += _check_opt_out(sc, i_a, present, must_charge)
    return out


def _check_opt_out(
    sc: _Scenario, i_a: FloatArray, present: BoolArray, must_charge: BoolArray
) -> list[Violation]:
    """``opt_out``: ``i_s(t) ≥ min(connector limit_a, station limit_a(t) / m_s(t))``.

    ``m_s(t)`` is the largest number of sessions present at the station at ``t`` on any one
    phase that ``s`` draws on.
    """
    n_st = len(sc.station_ids)
    on_phase = (present[:, None, :] & sc.draws[:, :, None]).astype(float)
    count = _group_sum(on_phase, sc.session_station, n_st)  # stations × 3 × steps
    idx = np.flatnonzero(sc.opt_out)
    st = sc.session_station[idx]
    m = (count[st] * sc.draws[idx][:, :, None]).max(axis=1)
    share = np.minimum(sc.conn_limit_a[idx, None], sc.station_limit_a[st] / np.maximum(m, 1.0))
    if sc.session_cap_a is not None:  # a session cap lowers the share it is owed
        share = np.minimum(share, sc.session_cap_a[idx])
    subjects = [sc.session_ids[s] for s in idx.tolist()]
    return _under("opt_out", subjects, i_a[idx], share, must_charge[idx], "A")


def _session_reports(
    sc: _Scenario, schedule: Mapping[str, Any], i_a: FloatArray
) -> list[Violation]:
    """``report_mismatch`` of each session's ``energy_kwh`` and ``unmet_kwh``."""
    out: list[Violation] = []
    entries = schedule.get("sessions") or {}
    e_kwh = (i_a.sum(axis=1) * sc.kw_per_a * sc.dt_h).tolist()
    for s, sid in enumerate(sc.session_ids):
        entry = entries.get(sid)
        if not isinstance(entry, Mapping):
            continue  # already a `length` violation
        e = e_kwh[s]
        need = float(sc.need_kwh[s])
        unmet = None if np.isnan(need) else max(0.0, need - e)
        for field, value, subject in (
            ("energy_kwh", e, sid),
            ("unmet_kwh", unmet, f"{sid}:unmet_kwh"),
        ):
            rep = entry.get(field)
            if value is None:
                if rep is not None:
                    amount = abs(rep) if isinstance(rep, int | float) else 0.0
                    out.append(Violation("report_mismatch", subject, None, float(amount), "kWh"))
                continue
            if not isinstance(rep, int | float) or isinstance(rep, bool) or not np.isfinite(rep):
                out.append(Violation("report_mismatch", subject, None, abs(value), "kWh"))
                continue
            diff = abs(float(rep) - value)
            if diff > _tol(ATOL_KWH, value):
                out.append(Violation("report_mismatch", subject, None, diff, "kWh"))
    return out


def _node_reports(
    sc: _Scenario, schedule: Mapping[str, Any], station_kw: FloatArray, node_kw: FloatArray
) -> list[Violation]:
    """``report_mismatch`` of ``nodes[id].power_kw`` for every node and station."""
    out: list[Violation] = []
    reported = schedule.get("nodes") or {}
    ids = sc.node_ids + sc.station_ids
    computed = np.concatenate([node_kw, station_kw]) if ids else np.zeros((0, sc.steps))
    rows: list[int] = []
    values: list[FloatArray] = []
    for r, nid in enumerate(ids):
        entry = reported.get(nid)
        parsed = _as_steps(entry.get("power_kw"), sc.steps) if isinstance(entry, Mapping) else None
        if parsed is None or parsed[1]:
            amount = float(np.abs(computed[r]).max())
            out.append(Violation("report_mismatch", nid, None, amount, "kW"))
            continue
        rows.append(r)
        values.append(parsed[0])
    if rows:
        ref = computed[rows]
        diff = np.abs(np.stack(values) - ref)
        subjects = [ids[r] for r in rows]
        out += _from_mask("report_mismatch", subjects, diff > _tol(ATOL_KW, ref), diff, "kW")
    known = set(ids)
    for nid, entry in reported.items():
        if nid not in known:
            p = entry.get("power_kw") if isinstance(entry, Mapping) else None
            parsed = _as_steps(p, sc.steps)
            amount = float(np.abs(parsed[0]).max()) if parsed is not None else 0.0
            out.append(Violation("report_mismatch", str(nid), None, amount, "kW"))
    return out


def _sort_key(v: Violation) -> tuple[str, str, int]:
    return (v.kind, v.subject, -1 if v.step is None else v.step)


def check_schedule(scenario: Mapping[str, Any], schedule: Mapping[str, Any]) -> list[Violation]:
    """Every violated rule of ``docs/formats.md``, sorted by (kind, subject, step).

    Parameters
    ----------
    scenario : Mapping
        The raw ``gridcharge.scenario/1`` JSON object (defaults are applied here).
    schedule : Mapping
        The raw ``gridcharge.schedule/1`` JSON object.

    Returns
    -------
    list[Violation]
        Empty when the schedule is valid. Amounts are [A], [kW] or [kWh].

    Raises
    ------
    ValueError
        When the scenario itself is malformed (unknown reference, node cycle, bad list
        length, time without offset).
    """
    sc = _parse_scenario(scenario)
    found = _check_grid(sc, schedule)
    i_a, length = _current_matrix(sc, schedule)
    found += length
    present = _presence(sc)
    found += _check_session_currents(sc, i_a, present)
    found += _check_phase_limits(sc, i_a)
    p_kw = i_a * sc.kw_per_a[:, None]
    station_kw = _group_sum(p_kw, sc.session_station, len(sc.station_ids))
    node_kw = _up_the_tree(sc, station_kw)
    found += _check_power_limits(sc, node_kw)
    found += _check_energy_and_minimum(sc, i_a, present)
    found += _session_reports(sc, schedule, i_a)
    found += _node_reports(sc, schedule, station_kw, node_kw)
    return sorted(found, key=_sort_key)


def explained(found: list[Violation], reported: list[dict[str, Any]]) -> list[Violation]:
    """The violations in ``found`` that the schedule's own ``violations`` do NOT explain.

    A found violation is explained by a reported entry with the same ``kind``, the same
    subject (under ``node`` or ``session``), the same ``step`` and
    ``amount ≥ found.amount − tol``. Only the limit kinds in :data:`EXPLAINABLE_KINDS` can be
    explained; every other kind is always returned.

    Parameters
    ----------
    found : list[Violation]
        Output of :func:`check_schedule`.
    reported : list[dict]
        The schedule's ``violations`` list.

    Returns
    -------
    list[Violation]
        The unexplained violations, in the order of ``found``.
    """
    best: dict[tuple[str, str, int | None], float] = {}
    for r in reported:
        if not isinstance(r, Mapping):
            continue
        step_raw = r.get("step")
        amount = r.get("amount")
        if not isinstance(amount, int | float) or not isinstance(step_raw, int | float | None):
            continue
        step = None if step_raw is None else int(step_raw)
        for key in ("node", "session"):
            subject = r.get(key)
            if subject is None:
                continue
            k = (str(r.get("kind")), str(subject), step)
            best[k] = max(best.get(k, -np.inf), float(amount))
    out: list[Violation] = []
    for v in found:
        if v.kind in EXPLAINABLE_KINDS:
            claimed = best.get((v.kind, v.subject, v.step))
            if claimed is not None and claimed >= v.amount - float(_tol(ATOL_A, v.amount)):
                continue
        out.append(v)
    return out
