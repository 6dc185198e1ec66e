"""Compile a validated scenario into numpy arrays on one UTC grid.

The compiled :class:`Network` is what every method (LP, greedy, uncontrolled) works on. Limits
that apply to groups of sessions (a station's phase, a node's phase or power, a DSO cap) are
collected as *limit groups*: a sparse incidence matrix ``groups × sessions`` of coefficients
(1 for per-phase ampere limits, kW per ampere for power limits) and a ``groups × steps`` matrix of
limits. One constraint family is one ``kind`` of group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from optimizer.scenario import Grid, Limit, Scenario

PHASES = ("L1", "L2", "L3")

GROUP_KINDS = ("station_phase_limit", "node_phase_limit", "node_power_limit", "dso_cap")
"""Kinds of limit group, in the order they are built; the names match the checker's kinds."""

UNIT_OF_KIND = {
    "station_phase_limit": "A",
    "node_phase_limit": "A",
    "node_power_limit": "kW",
    "dso_cap": "kW",
}


@dataclass
class LimitGroups:
    """Group limits: row ``g`` bounds ``Σ_s coef[g, s] · i_a[s, t] ≤ limit[g, t]``.

    Attributes
    ----------
    kind : list[str]
        Constraint family of each group (one of :data:`GROUP_KINDS`).
    subject : list[str]
        Node or station id, with ``:L1``/``:L2``/``:L3`` for per-phase groups.
    coef : scipy.sparse.csr_matrix
        ``groups × sessions``; [1] for phase groups, [kW/A] for power groups.
    limit : numpy.ndarray
        ``groups × steps`` limits [A] or [kW].
    dominated : numpy.ndarray
        True for a phase group whose members are a subset of another phase group of the same
        subject (e.g. L2 and L3 when only 3-phase cars are present): such a group can never bind
        first, so the LP leaves it out, but violations are still reported on every phase.
    """

    kind: list[str]
    subject: list[str]
    coef: sp.csr_matrix
    limit: np.ndarray
    dominated: np.ndarray  # True where another group of the same subject implies this one

    @property
    def n(self) -> int:
        return len(self.kind)


@dataclass
class Network:
    """Sessions, stations and limits of one scenario as arrays on the UTC grid.

    Per-session arrays are indexed by session position ``s`` (scenario order). A session is
    present in steps ``first[s] <= t < end[s]``.
    """

    grid: Grid
    voltage_v: float
    session_ids: list[str]
    first: np.ndarray  # [step] first present step
    end: np.ndarray  # [step] one past the last present step
    need_kwh: np.ndarray  # [kWh] energy needed; NaN when the car takes all it gets
    n_phases: np.ndarray  # phases drawn on (1 or 3)
    phase_mask: np.ndarray  # sessions × 3, True where the session draws on L1/L2/L3
    kw_per_a: np.ndarray  # [kW/A] n_phases · V / 1000
    max_a: np.ndarray  # [A] connector limit
    min_a: np.ndarray  # [A] station minimum current
    opt_out: np.ndarray
    pause_consent: np.ndarray
    session_station: np.ndarray  # station index per session
    session_connector: list[str]
    evse_index: np.ndarray  # 1-based connector position within its station
    station_ids: list[str]
    station_limit_a: np.ndarray  # stations × steps [A]
    node_ids: list[str]
    node_parent: np.ndarray  # node index of parent, -1 for a root
    station_node: np.ndarray
    groups: LimitGroups
    node_members: dict[str, np.ndarray]  # node or station id -> session indices below it
    target_nodes: list[str] = field(default_factory=list)
    target_kw: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    cap_kw: dict[str, np.ndarray] = field(default_factory=dict)
    price_eur_per_mwh: np.ndarray | None = None
    cap_a: np.ndarray | None = None  # sessions × steps [A] session caps (inf: none); None: none
    _memo: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """Derived arrays computed once (see :meth:`uncontrolled_share_a`)."""

    @property
    def steps(self) -> int:
        return self.grid.steps

    @property
    def dt_h(self) -> float:
        return self.grid.dt_h

    @property
    def n_sessions(self) -> int:
        return len(self.session_ids)

    def step_max_a(self) -> np.ndarray:
        """Highest current [A] of every session in every step: ``min(connector limit, cap)``."""
        most = np.repeat(self.max_a[:, None], self.steps, axis=1)
        if self.cap_a is not None:
            most = np.minimum(most, self.cap_a)
        return most

    def most_a_per_stay(self) -> np.ndarray:
        """Sum over each session's stay of its highest current [A·steps]."""
        stay = (self.end - self.first).astype(float)
        if self.cap_a is None:
            return self.max_a * stay
        return (self.step_max_a() * self.presence()).sum(axis=1)

    def step_max_a_at(self, sessions: np.ndarray, step: int) -> np.ndarray:
        """:meth:`step_max_a` of some sessions in one step [A]."""
        most = self.max_a[sessions]
        if self.cap_a is not None:
            most = np.minimum(most, self.cap_a[sessions, step])
        return most

    def presence(self) -> np.ndarray:
        """Boolean matrix sessions × steps, True where the session is plugged in."""
        t = np.arange(self.steps)
        return (t[None, :] >= self.first[:, None]) & (t[None, :] < self.end[:, None])

    def uncontrolled_share_a(self, sessions: np.ndarray | None = None) -> np.ndarray:
        """Current [A] per session and step a station gives when it does not steer.

        Every plugged-in session gets ``min(connector limit, station limit / m)`` where ``m`` is
        the largest number of the station's plugged-in sessions on any phase it draws on.
        With ``sessions`` (indices), the rows of those sessions only; without, every row,
        computed once per network (the result is read-only).
        """
        if sessions is None:
            cached = self._memo.get("uncontrolled_share_a")
            if cached is not None:
                return cached
        rows = np.arange(self.n_sessions) if sessions is None else np.asarray(sessions)
        steps = self.steps
        st = self.session_station
        # only the stations of the wanted rows are counted, numbered locally
        stations = np.unique(st[rows])
        local = np.full(len(self.station_ids), -1, dtype=np.int64)
        local[stations] = np.arange(stations.size)
        size = stations.size * (steps + 1)
        m = np.zeros((rows.size, steps))
        for ph in range(3):
            on = np.nonzero(self.phase_mask[:, ph] & (local[st] >= 0))[0]
            if on.size == 0:
                continue
            # plugged-in sessions per station and step on this phase: +1 at arrival, -1 at
            # departure, summed along the steps
            at = local[st[on]] * (steps + 1)
            delta = np.bincount(at + self.first[on], minlength=size) - np.bincount(
                at + self.end[on], minlength=size
            )
            count = np.cumsum(delta.reshape(stations.size, steps + 1)[:, :steps], axis=1)
            mine = self.phase_mask[rows, ph]
            m[mine] = np.maximum(m[mine], count[local[st[rows[mine]]]])
        with np.errstate(divide="ignore"):
            share = self.station_limit_a[st[rows]] / np.maximum(m, 1.0)
        t = np.arange(steps)
        present = (t >= self.first[rows, None]) & (t < self.end[rows, None])
        out = np.minimum(self.max_a[rows, None], share) * present
        if sessions is None:
            out.flags.writeable = False
            self._memo["uncontrolled_share_a"] = out
        return out


def gather(matrix: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``matrix[s, t]`` for the cells at ``flat = s · steps + t`` of a ``sessions × steps``
    matrix: a take from the flat view, several times faster than indexing with two arrays
    (a schedule has about 700,000 plugged-in cells at 16,000 connectors)."""
    return np.ravel(matrix).take(flat)


def _steps_of(limit: Limit | None, steps: int) -> np.ndarray:
    if limit is None:
        return np.full(steps, np.inf)
    if isinstance(limit, list):
        return np.asarray(limit, dtype=np.float64)
    return np.full(steps, float(limit))


def _step_index(grid: Grid, when_s: np.ndarray, up: bool) -> np.ndarray:
    """Grid index of instants given as seconds after the grid start, rounded up or down."""
    q = when_s / grid.step_s
    # tolerate float noise of a microsecond before rounding
    return np.ceil(q - 1e-9).astype(np.int64) if up else np.floor(q + 1e-9).astype(np.int64)


def compile_network(sc: Scenario) -> Network:
    """Arrays and limit groups of a validated scenario.

    Arrival is rounded up and departure down to the grid; see ``docs/formats.md``.
    """
    grid = sc.grid
    steps = grid.steps
    start = grid.start_utc
    v = sc.voltage_v

    node_ids = [n.id for n in sc.nodes]
    node_idx = {n: k for k, n in enumerate(node_ids)}
    node_parent = np.array(
        [node_idx[n.parent] if n.parent is not None else -1 for n in sc.nodes], dtype=np.int64
    )
    station_ids = [s.id for s in sc.stations]
    station_node = np.array([node_idx[s.node] for s in sc.stations], dtype=np.int64)
    station_limit_a = (
        np.vstack([_steps_of(s.limit_a, steps) for s in sc.stations])
        if sc.stations
        else np.zeros((0, steps))
    )

    conn_station: dict[str, int] = {}
    conn_obj = {}
    conn_pos: dict[str, int] = {}
    for k, st in enumerate(sc.stations):
        for j, c in enumerate(st.connector_list()):
            conn_station[c.id] = k
            conn_obj[c.id] = c
            conn_pos[c.id] = j + 1

    n = len(sc.sessions)
    arr_s = np.array([(s.arrival - start).total_seconds() for s in sc.sessions], dtype=float)
    dep_s = np.array(
        [(s.departure_or_default - start).total_seconds() for s in sc.sessions], dtype=float
    )
    first = np.clip(_step_index(grid, arr_s, up=True), 0, steps)
    end = np.clip(_step_index(grid, dep_s, up=False), 0, steps)
    end = np.maximum(end, first)

    sess_station = np.array([conn_station[s.connector] for s in sc.sessions], dtype=np.int64)
    n_phases = np.array(
        [min(s.phases, conn_obj[s.connector].phases) for s in sc.sessions], dtype=np.int64
    )
    phase_mask = np.zeros((n, 3), dtype=bool)
    for k, s in enumerate(sc.sessions):
        if n_phases[k] == 3:
            phase_mask[k, :] = True
        else:
            phase_mask[k, PHASES.index(conn_obj[s.connector].phase)] = True
    need = np.array(
        [s.energy_kwh if s.energy_kwh is not None else math.nan for s in sc.sessions], dtype=float
    )
    max_a = np.array([conn_obj[s.connector].limit_a for s in sc.sessions], dtype=float)
    min_a = np.array([sc.stations[sess_station[k]].min_current_a for k in range(n)], dtype=float)

    # members of every node: sessions of stations below it (transitively)
    children_stations: dict[int, list[int]] = {k: [] for k in range(len(node_ids))}
    for st_k, nd in enumerate(station_node):
        up = int(nd)
        while up >= 0:
            children_stations[up].append(st_k)
            up = int(node_parent[up])
    sessions_of_station: list[list[int]] = [[] for _ in station_ids]
    for s_k, st_k in enumerate(sess_station):
        sessions_of_station[int(st_k)].append(s_k)
    node_members: dict[str, np.ndarray] = {}
    for nd_k, nid in enumerate(node_ids):
        below = [s for st in children_stations[nd_k] for s in sessions_of_station[st]]
        node_members[nid] = np.array(sorted(below), dtype=np.int64)
    for st_k, sid in enumerate(station_ids):
        node_members[sid] = np.array(sessions_of_station[st_k], dtype=np.int64)

    kw_per_a = n_phases * v / 1000.0
    kinds: list[str] = []
    subjects: list[str] = []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    limits: list[np.ndarray] = []
    dominated: list[bool] = []

    def add_phase_groups(kind: str, subject: str, members: np.ndarray, limit: np.ndarray) -> None:
        """One group per phase; phases that only 3-phase cars use are marked dominated."""
        if members.size == 0 or not np.isfinite(limit).any():
            return
        masks = phase_mask[members]
        single = masks.sum(axis=1) == 1
        used = [ph for ph in range(3) if (masks[single, ph]).any()]
        if not used:
            used = [0]  # all 3-phase: the three phase sums are equal
        for ph in range(3):
            on = members[masks[:, ph]]
            if on.size == 0:
                continue
            g = len(kinds)
            dominated.append(ph not in used)
            kinds.append(kind)
            subjects.append(f"{subject}:{PHASES[ph]}")
            rows.append(np.full(on.size, g))
            cols.append(on)
            vals.append(np.ones(on.size))
            limits.append(limit)

    def add_power_group(kind: str, subject: str, members: np.ndarray, limit: np.ndarray) -> None:
        if members.size == 0 or not np.isfinite(limit).any():
            return
        g = len(kinds)
        dominated.append(False)
        kinds.append(kind)
        subjects.append(subject)
        rows.append(np.full(members.size, g))
        cols.append(members)
        vals.append(kw_per_a[members])
        limits.append(limit)

    for st_k, sid in enumerate(station_ids):
        add_phase_groups("station_phase_limit", sid, node_members[sid], station_limit_a[st_k])
    for nd_k, nd in enumerate(sc.nodes):
        members = node_members[node_ids[nd_k]]
        add_phase_groups("node_phase_limit", nd.id, members, _steps_of(nd.limit_a, steps))
    for nd_k, nd in enumerate(sc.nodes):
        members = node_members[node_ids[nd_k]]
        add_power_group("node_power_limit", nd.id, members, _steps_of(nd.limit_kw, steps))
    cap_kw: dict[str, np.ndarray] = {}
    target_nodes: list[str] = []
    targets: list[np.ndarray] = []
    for prof in sc.dso_profiles:
        if prof.cap_kw is not None:
            cap = np.asarray(prof.cap_kw, dtype=np.float64)
            cap_kw[prof.node] = np.minimum(cap_kw.get(prof.node, np.inf), cap)
            add_power_group("dso_cap", prof.node, node_members[prof.node], cap)
        if prof.target_kw is not None:
            target_nodes.append(prof.node)
            targets.append(np.asarray(prof.target_kw, dtype=np.float64))

    n_groups = len(kinds)
    coef = sp.csr_matrix(
        (
            np.concatenate(vals) if vals else np.zeros(0),
            (
                np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
                np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64),
            ),
        ),
        shape=(n_groups, n),
    )
    limit = np.vstack(limits) if limits else np.zeros((0, steps))

    return Network(
        grid=grid,
        voltage_v=v,
        session_ids=[s.id for s in sc.sessions],
        first=first,
        end=end,
        need_kwh=need,
        n_phases=n_phases,
        phase_mask=phase_mask,
        kw_per_a=kw_per_a,
        max_a=max_a,
        min_a=min_a,
        opt_out=np.array([s.opt_out for s in sc.sessions], dtype=bool),
        pause_consent=np.array([s.pause_consent for s in sc.sessions], dtype=bool),
        session_station=sess_station,
        session_connector=[s.connector for s in sc.sessions],
        evse_index=np.array([conn_pos[s.connector] for s in sc.sessions], dtype=np.int64),
        station_ids=station_ids,
        station_limit_a=station_limit_a,
        node_ids=node_ids,
        node_parent=node_parent,
        station_node=station_node,
        groups=LimitGroups(kinds, subjects, coef, limit, np.array(dominated, dtype=bool)),
        node_members=node_members,
        target_nodes=target_nodes,
        target_kw=np.vstack(targets) if targets else np.zeros((0, steps)),
        cap_kw=cap_kw,
        price_eur_per_mwh=(
            np.asarray(sc.prices_eur_per_mwh, dtype=float)
            if sc.prices_eur_per_mwh is not None
            else None
        ),
        cap_a=(
            np.vstack([_steps_of(s.limit_a, steps) for s in sc.sessions])
            if any(s.limit_a is not None for s in sc.sessions)
            else None
        ),
    )
