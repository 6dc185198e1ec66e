"""The solver-agnostic scheduling problem: arrays both the pyomo model and the HiGHS twin read.

Decision variables are the currents ``i[s, t]`` [A] of session ``s`` in step ``t``, built only
where the session is present (sparse), ordered by session then step. All equations are in
``docs/objective.md``; the array fields below carry their units in their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import scipy.sparse as sp

from optimizer.network import Network, gather

UNMET_SEGMENT_SLOPES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
"""Relative marginal penalty of the K equal shortfall segments of a session (fairness).

The penalty grows with the unserved share, so shortfall is spread: two sessions' unserved
shares differ by at most one segment (1/K of the need) at the optimum."""


@dataclass(frozen=True)
class Weights:
    """Objective weights (documented in ``docs/objective.md``).

    Attributes
    ----------
    unmet_per_kwh : float
        Penalty of the first kWh of shortfall; later segments cost
        :data:`UNMET_SEGMENT_SLOPES` times more.
    slack_per_unit_h : float
        Penalty of exceeding a limit by 1 A or 1 kW for one hour.
    target_per_kwh : float
        Penalty of deviating from a DSO target by 1 kWh.
    price_weight : float
        Multiplies the energy cost [EUR].
    front_per_kwh : float
        Penalty of delivering 1 kWh at the end instead of the start of a stay.
    """

    unmet_per_kwh: float = 100.0
    slack_per_unit_h: float = 1.0e5
    target_per_kwh: float = 10.0
    price_weight: float = 1.0
    front_per_kwh: float = 0.1


@dataclass
class Layout:
    """Everything the constraint matrices of a problem depend on: two problems with equal
    layouts have equal ``energy_rows``, ``limit_rows`` and ``target_rows``."""

    start: datetime
    dt_h: float
    steps: int
    session_ids: list[str]
    group_names: list[str]
    target_nodes: list[str]
    arrays: tuple[np.ndarray, ...]

    @classmethod
    def of(
        cls,
        net: Network,
        col_first: np.ndarray,
        col_end: np.ndarray,
        limit_group: np.ndarray,
        limit_step: np.ndarray,
        energy_session: np.ndarray,
    ) -> Layout:
        coef = net.groups.coef
        targets = [net.node_members[n] for n in net.target_nodes]
        return cls(
            start=net.grid.start_utc,
            dt_h=net.dt_h,
            steps=net.steps,
            session_ids=net.session_ids,
            group_names=[
                f"{k}:{s}" for k, s in zip(net.groups.kind, net.groups.subject, strict=True)
            ],
            target_nodes=list(net.target_nodes),
            arrays=(
                col_first,
                col_end,
                net.kw_per_a,
                coef.indptr,
                coef.indices,
                coef.data,
                limit_group,
                limit_step,
                energy_session,
                np.asarray([m.size for m in targets], dtype=np.int64),
                np.concatenate(targets) if targets else np.zeros(0, np.int64),
            ),
        )

    def same(self, other: Layout) -> bool:
        return (
            self.start == other.start
            and self.dt_h == other.dt_h
            and self.steps == other.steps
            and len(self.arrays) == len(other.arrays)
            and all(
                a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(self.arrays, other.arrays, strict=True)
            )
            and self.session_ids == other.session_ids
            and self.group_names == other.group_names
            and self.target_nodes == other.target_nodes
        )


@dataclass
class ChargingProblem:
    """One LP/MILP instance.

    Attributes
    ----------
    net : Network | None
        The compiled network (``None`` for a part shipped to another process, see
        :mod:`optimizer.decompose`).
    dt_h : float
        Step length [h].
    var_session, var_step : numpy.ndarray
        Session and step of each current variable.
    i_lo_a, i_hi_a : numpy.ndarray
        Bounds of each current [A]. ``i_lo_a`` is the minimum current where it is mandatory.
    i_req_a : numpy.ndarray
        The no-pause level of each variable [A] (minimum current, or the opt-out share);
        the level binaries switch on for ``pause_consent`` sessions.
    i_cost_per_a : numpy.ndarray
        Objective coefficient of each current (front-loading and price) [1/A].
    kwh_per_a : numpy.ndarray
        Energy in one step per ampere, per variable [kWh/A].
    kw_per_a : numpy.ndarray
        Power per ampere, per variable [kW/A].
    energy_session : numpy.ndarray
        Sessions with an energy balance row (``need_eff_kwh > 0``).
    need_eff_kwh : numpy.ndarray
        Energy each of those sessions should get [kWh]: its need, or what it could take at most.
    u_hi_kwh : numpy.ndarray
        Upper bound of each shortfall segment ``u[e, k]`` (flat, ``e·K + k``) [kWh]: ``E/K``, or
        0 for a session the anchor fills (it must be full by the anchor's fill step).
    limit_rows : scipy.sparse.csr_matrix
        ``rows × vars``, one row per (limit group, step) that can bind.
    limit_rhs : numpy.ndarray
        Right-hand side of each limit row [A] or [kW].
    limit_group, limit_step : numpy.ndarray
        Group and step of each limit row.
    target_rows : scipy.sparse.csr_matrix
        ``(target nodes · steps) × vars`` of kW coefficients.
    target_kw : numpy.ndarray
        Target of each target row [kW].
    binary_vars : numpy.ndarray
        Variables of ``pause_consent`` sessions (semi-continuous: 0 or at least ``i_req_a``).
    """

    net: Network | None
    weights: Weights
    dt_h: float
    var_session: np.ndarray
    var_step: np.ndarray
    i_lo_a: np.ndarray
    i_hi_a: np.ndarray
    i_req_a: np.ndarray
    i_cost_per_a: np.ndarray
    kwh_per_a: np.ndarray
    kw_per_a: np.ndarray
    energy_session: np.ndarray
    need_eff_kwh: np.ndarray
    u_hi_kwh: np.ndarray
    energy_rows: sp.csr_matrix
    limit_rows: sp.csr_matrix
    limit_rhs: np.ndarray
    limit_group: np.ndarray
    limit_step: np.ndarray
    target_rows: sp.csr_matrix
    target_kw: np.ndarray
    binary_vars: np.ndarray
    var_of: np.ndarray = field(repr=False)  # sessions × steps -> variable index or -1
    var_flat: np.ndarray | None = field(default=None, repr=False, compare=False)
    """``var_session · steps + var_step``: each variable's cell in the flat ``sessions × steps``
    matrix (set by :func:`build_problem`; ``None`` for a part)."""
    layout: Layout | None = field(default=None, repr=False, compare=False)
    """What fixes the matrices (set by :func:`build_problem`; ``None`` for a part)."""
    limit_most: np.ndarray | None = field(default=None, repr=False, compare=False)
    """``groups × steps``: every group's sum at its members' maximum currents (set by
    :func:`build_problem`; decides which limit rows can bind)."""

    @property
    def n_vars(self) -> int:
        return int(self.var_session.size)

    def flat_index(self) -> np.ndarray:
        """Each variable's cell in the flat ``sessions × steps`` matrix of its network."""
        if self.var_flat is not None:
            return self.var_flat
        if self.net is None:
            raise ValueError("net: a part of a problem has no network to place its cells in")
        return self.var_session * self.net.steps + self.var_step

    def currents(self, x: np.ndarray) -> np.ndarray:
        """Spread a solution vector to a ``sessions × steps`` current matrix [A]."""
        if self.net is None:
            raise ValueError("net: a part of a problem has no network to spread currents on")
        out = np.zeros((self.net.n_sessions, self.net.steps))
        out.ravel()[self.flat_index()] = x  # a view: ``out`` is new and contiguous
        return out


def required_level_a(net: Network) -> np.ndarray:
    """The no-pause current [A] per session and step: the minimum, or for an opt-out session
    the larger of the minimum and its uncontrolled share. Computed once per network (the
    result is read-only)."""
    cached = net._memo.get("required_level_a")
    if cached is not None:
        return cached
    rows = np.nonzero(net.opt_out)[0]
    if net.cap_a is None:
        # the maximum is the connector limit in every step: one pass over the day
        out = np.repeat(np.minimum(net.min_a, net.max_a)[:, None], net.steps, axis=1)
        if rows.size:
            level = np.maximum(net.min_a[rows, None], net.uncontrolled_share_a(rows))
            out[rows] = np.minimum(level, net.max_a[rows, None])
    else:
        req = np.repeat(net.min_a[:, None], net.steps, axis=1)
        if rows.size:
            req[rows] = np.maximum(req[rows], net.uncontrolled_share_a(rows))
        out = np.minimum(req, net.step_max_a())
    out.flags.writeable = False
    net._memo["required_level_a"] = out
    return out


def build_problem(
    net: Network,
    weights: Weights | None = None,
    anchor_a: np.ndarray | Callable[[], np.ndarray] | None = None,
    span: tuple[np.ndarray, np.ndarray] | None = None,
    like: ChargingProblem | None = None,
) -> ChargingProblem:
    """Arrays of the scheduling LP for a compiled network.

    Parameters
    ----------
    net : Network
    weights : Weights, optional
    anchor_a : numpy.ndarray, optional
        A schedule that obeys the no-pause rule (``sessions × steps`` [A], e.g. the greedy
        one). It fixes each car's charging window: a car the anchor fills must be full by the
        end of the anchor's fill step (no current after it, no shortfall), and in every step
        before it the lower bound is ``min(no-pause level, anchor)``. Within the window the LP
        chooses the currents freely. The LP then obeys the no-pause rule by construction, and
        since the anchor meets every bound the LP optimum is never worse than the anchor. A
        callable is called for it once everything that does not depend on it is built (a live
        engine computes the greedy schedule meanwhile).
    span : tuple of numpy.ndarray, optional
        First step and one past the last step [step] of each session's columns, a superset of
        its stay ``first ≤ t < end`` (default: the stay). Columns outside the stay are *idle*:
        fixed at 0 A, cost 0, so the LP and its optimum are the same as without them. A live
        engine keeps a session's columns when its predicted departure or energy need moves, so
        the change is a change of bounds that the solver re-solves from its basis
        (:mod:`optimizer.engine`).
    like : ChargingProblem, optional
        A problem built before (by a live engine, from the previous network). When it has the
        same layout (columns, rows and coefficients), its constraint matrices are shared
        instead of built again; only bounds, costs and right-hand sides are new.
    """
    w = weights or Weights()
    dt_h = net.dt_h
    col_first, col_end = (net.first, net.end) if span is None else _widened(net, *span)
    # one variable per column, ordered by session, then step
    width = col_end - col_first
    var_session = np.repeat(np.arange(net.n_sessions), width)
    nv = var_session.size
    run_start = np.repeat(np.cumsum(width) - width, width)  # each session's first variable
    var_step = np.arange(nv) - run_start + col_first[var_session]
    var_flat = var_session * net.steps + var_step

    kw = net.kw_per_a[var_session]
    kwh = kw * dt_h
    hi = net.max_a[var_session].astype(float)
    if net.cap_a is not None:
        hi = np.minimum(hi, gather(net.cap_a, var_flat))
    req = gather(required_level_a(net), var_flat)

    stay = (net.end - net.first).astype(float)
    deliverable = net.most_a_per_stay() * net.kw_per_a * dt_h
    has_need = ~np.isnan(net.need_kwh)
    need_eff = np.where(has_need, np.minimum(np.nan_to_num(net.need_kwh), deliverable), deliverable)

    # mandatory minimum: always for sessions without a need; for the others only in the steps
    # before the car could possibly be full (even at its maximum current)
    pos = var_step - net.first[var_session]
    surely_not_full = np.floor(
        need_eff / np.maximum(net.max_a * net.kw_per_a * dt_h, 1e-12) + 1e-9
    ).astype(np.int64)
    mandatory = np.where(has_need[var_session], pos < surely_not_full[var_session], True)
    mandatory &= ~net.pause_consent[var_session]
    lo = np.where(mandatory, req, 0.0)
    K = len(UNMET_SEGMENT_SLOPES)
    u_hi = np.repeat(need_eff / K, K).reshape(-1, K)
    # a car that needs nothing (already full) takes nothing and has no energy row
    full = need_eff[var_session] <= 1e-9
    idle = (
        None
        if span is None
        else (var_step < net.first[var_session]) | (var_step >= net.end[var_session])
    )

    # front-loading: relative position in the stay, in (0, 1]
    front = (pos + 1.0) / np.maximum(stay[var_session], 1.0)
    cost = w.front_per_kwh * front * kwh
    if net.price_eur_per_mwh is not None:
        cost = cost + w.price_weight * net.price_eur_per_mwh[var_step] / 1000.0 * kwh
    if idle is not None:
        cost[idle] = 0.0

    # a pause-consent car that needs less than one step at its minimum fills in one shorter step
    pause = net.pause_consent[var_session]
    req[pause] = np.minimum(req[pause], need_eff[var_session[pause]] / kwh[pause])

    with_row = need_eff > 1e-9
    if span is not None:
        # a session keeps its row while it has columns, even when its stay shrank to nothing
        # (its columns are idle, the row reads 0 = 0), so the shape does not change
        with_row |= col_end > col_first
    energy_session = np.nonzero(with_row)[0]

    most = _like_most(like, net, col_first, col_end)
    if most is None:
        most = _limit_most(net, col_first, col_end)
    limit_group, limit_step = _limit_row_set(net, most)
    limit_rhs = net.groups.limit[limit_group, limit_step]
    layout = Layout.of(net, col_first, col_end, limit_group, limit_step, energy_session)
    if like is not None and like.layout is not None and like.layout.same(layout):
        # the same columns, rows and coefficients: share the matrices
        energy_rows, limit_rows, target_rows = like.energy_rows, like.limit_rows, like.target_rows
        var_of = like.var_of
    else:
        var_of = np.full((net.n_sessions, net.steps), -1, dtype=np.int64)
        var_of.ravel()[var_flat] = np.arange(nv)
        energy_rows = _energy_matrix(energy_session, var_session, kwh, net.n_sessions)
        row_of = np.full(net.groups.limit.shape, -1, dtype=np.int64)  # (group, step) -> row
        row_of[limit_group, limit_step] = np.arange(limit_group.size)
        limit_rows = _limit_matrix(net, row_of, limit_group.size, var_session, var_step)
        target_rows = _target_matrix(net, var_of, kw)
    target_kw = net.target_kw.ravel()

    if anchor_a is not None:
        # last, so that everything above is built while the anchor is computed
        anchor = anchor_a() if callable(anchor_a) else anchor_a
        anchor_var = gather(anchor, var_flat)
        anchored = np.minimum(req, anchor_var)
        anchored[pause] = 0.0  # (their ``req`` was cut above; they get no anchored bound)
        lo = np.maximum(lo, anchored)
        # sessions the anchor fills: nothing after the fill step, and no shortfall
        fills, after = _anchor_fill(
            net, anchor, anchor_var, need_eff, var_session, var_step, kwh, run_start
        )
        hi[after] = 0.0
        lo[after] = 0.0
        u_hi[fills] = 0.0
    hi[full] = 0.0
    lo[full] = 0.0
    if idle is not None:
        hi[idle] = 0.0
        lo[idle] = 0.0

    return ChargingProblem(
        net=net,
        weights=w,
        dt_h=dt_h,
        var_session=var_session,
        var_step=var_step,
        i_lo_a=lo,
        i_hi_a=hi,
        i_req_a=req,
        i_cost_per_a=cost,
        kwh_per_a=kwh,
        kw_per_a=kw,
        energy_session=energy_session,
        need_eff_kwh=need_eff[energy_session],
        u_hi_kwh=u_hi[energy_session].ravel(),
        energy_rows=energy_rows,
        limit_rows=limit_rows,
        limit_rhs=limit_rhs,
        limit_group=limit_group,
        limit_step=limit_step,
        target_rows=target_rows,
        target_kw=target_kw,
        binary_vars=np.nonzero(net.pause_consent[var_session])[0],
        var_of=var_of,
        var_flat=var_flat,
        layout=layout,
        limit_most=most,
    )


def _energy_matrix(
    energy_session: np.ndarray, var_session: np.ndarray, kwh: np.ndarray, n_sessions: int
) -> sp.csr_matrix:
    """Rows ``Σ_t kwh_per_a · i[s, t]`` of the sessions with an energy row [kWh/A]."""
    nv = var_session.size
    e_row_of_session = np.full(n_sessions, -1, dtype=np.int64)
    e_row_of_session[energy_session] = np.arange(energy_session.size)
    e_rows = e_row_of_session[var_session]
    keep = e_rows >= 0
    return sp.csr_matrix(
        (kwh[keep], (e_rows[keep], np.nonzero(keep)[0])), shape=(energy_session.size, nv)
    )


def _anchor_fill(
    net: Network,
    anchor_a: np.ndarray,
    anchor_var: np.ndarray,
    need_eff: np.ndarray,
    var_session: np.ndarray,
    var_step: np.ndarray,
    kwh: np.ndarray,
    run_start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sessions the anchor fills (``need_eff`` reached), and the variables after the step in
    which it fills them. ``anchor_var``: the anchor at each variable; ``run_start``: each
    variable's session's first variable.

    Works on the variables (session-major, each session's in one run) when the anchor has no
    current outside them, else on the whole ``sessions × steps`` matrix.
    """
    threshold = need_eff - 1e-6
    e_var = anchor_var * kwh
    if np.count_nonzero(e_var) != np.count_nonzero(anchor_a):
        e_cum = np.cumsum(anchor_a * (net.kw_per_a * net.dt_h)[:, None], axis=1)
        fills = (e_cum[:, -1] >= threshold) & (need_eff > 1e-9) & ~net.pause_consent
        fill_step = np.argmax(e_cum >= threshold[:, None], axis=1)
        return fills, fills[var_session] & (var_step > fill_step[var_session])
    nv = var_session.size
    total = np.cumsum(e_var)
    e_cum = total - (total - e_var)[run_start]  # energy up to and including each variable
    reached = e_cum >= threshold[var_session]
    # reached in an earlier variable of the same session
    seen = np.cumsum(reached) - reached
    earlier = seen - seen[run_start] > 0
    delivered = np.zeros(net.n_sessions)
    last = np.ones(nv, dtype=bool)
    last[:-1] = var_session[1:] != var_session[:-1]
    delivered[var_session[last]] = e_cum[last]
    fills = (delivered >= threshold) & (need_eff > 1e-9) & ~net.pause_consent
    return fills, fills[var_session] & earlier


def _widened(net: Network, first: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column steps ``[first, end)`` of every session: its stay and the given span, and all
    steps between them (the stay alone where the span is empty, the span where the stay is)."""
    if first.shape != (net.n_sessions,) or end.shape != (net.n_sessions,):
        raise ValueError(f"span: one first and end step per session expected (got {first.shape})")
    first = np.clip(first, 0, net.steps)
    end = np.clip(end, 0, net.steps)
    stay, spans = net.end > net.first, end > first
    both = stay & spans
    lo = np.where(both, np.minimum(first, net.first), np.where(spans, first, net.first))
    hi = np.where(both, np.maximum(end, net.end), np.where(spans, end, net.end))
    return lo, np.maximum(hi, lo)


def _limit_most(net: Network, col_first: np.ndarray, col_end: np.ndarray) -> np.ndarray:
    """``groups × steps``: ``Σ_s coef[g, s] · max[s]`` over the sessions with a column in each
    step [A] or [kW]. ``col_first``, ``col_end``: the steps ``[first, end)`` in which each
    session has columns."""
    groups = net.groups
    steps = net.steps
    # +coef·max at a member's first column, -coef·max after its last, summed along the steps
    coo = groups.coef.tocoo()
    weight = coo.data * net.max_a[coo.col]
    width = steps + 1
    delta = np.bincount(
        np.concatenate([coo.row * width + col_first[coo.col], coo.row * width + col_end[coo.col]]),
        weights=np.concatenate([weight, -weight]),
        minlength=groups.n * width,
    )
    most = np.cumsum(delta.reshape(groups.n, width)[:, :steps], axis=1)
    most.flags.writeable = False
    return most


def _like_most(
    like: ChargingProblem | None, net: Network, col_first: np.ndarray, col_end: np.ndarray
) -> np.ndarray | None:
    """:func:`_limit_most` of ``like`` when it has the same columns, groups and maxima."""
    if like is None or like.limit_most is None or like.layout is None or like.net is None:
        return None
    old, coef = like.layout.arrays, net.groups.coef
    same = (
        like.limit_most.shape == net.groups.limit.shape
        and np.array_equal(like.net.max_a, net.max_a)
        and all(
            np.array_equal(a, b)
            for a, b in zip(
                old[:6],
                (col_first, col_end, net.kw_per_a, coef.indptr, coef.indices, coef.data),
                strict=True,
            )
        )
    )
    return like.limit_most if same else None


def _limit_row_set(net: Network, most: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (group, step) pairs that can bind: ``Σ_s coef[g, s] · max[s] > limit[g, t]`` over
    the sessions with a column in ``t`` (``most``, :func:`_limit_most`); as groups and steps.

    A row whose members cannot exceed the limit even at their maximum current is dropped.
    """
    groups = net.groups
    if groups.n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    can_bind = (most > groups.limit + 1e-9) & ~groups.dominated[:, None]
    bind_g, bind_t = np.nonzero(can_bind)
    return bind_g, bind_t


def _limit_matrix(
    net: Network, row_of: np.ndarray, n_rows: int, var_session: np.ndarray, var_step: np.ndarray
) -> sp.csr_matrix:
    """Rows ``Σ_s coef[g, s] · i[s, t]`` of the limit rows numbered by ``row_of``."""
    groups = net.groups
    nv = var_session.size
    if n_rows == 0 or nv == 0:
        return sp.csr_matrix((n_rows, nv))
    has_row = np.any(row_of >= 0, axis=1)
    # the memberships (session, group) of groups with a row at all, per session
    member = groups.coef.T.tocsr()
    useful = has_row[member.indices]
    m_index, m_data = member.indices[useful], member.data[useful]
    m_count = np.bincount(
        np.repeat(np.arange(net.n_sessions), np.diff(member.indptr))[useful],
        minlength=net.n_sessions,
    )
    m_start = np.cumsum(m_count) - m_count
    # every variable takes its session's memberships: entries in variable (column) order, and
    # within a variable in group order, which is row order: the arrays of a CSC matrix
    count = m_count[var_session]
    first = np.cumsum(count) - count
    flat = np.repeat(m_start[var_session] - first, count) + np.arange(int(count.sum()))
    entry_var = np.repeat(np.arange(nv), count)
    row = row_of[m_index[flat], var_step[entry_var]]
    ok = row >= 0
    indptr = np.concatenate([[0], np.cumsum(np.bincount(entry_var[ok], minlength=nv))])
    rows = sp.csc_matrix((m_data[flat[ok]], row[ok], indptr), shape=(n_rows, nv)).tocsr()
    return rows


def _target_matrix(net: Network, var_of: np.ndarray, kw: np.ndarray) -> sp.csr_matrix:
    """Rows ``Σ_{s below n} p[s, t]`` for each target node ``n`` and step ``t`` [kW]."""
    nv = kw.size
    steps = net.steps
    if not net.target_nodes:
        return sp.csr_matrix((0, nv))
    r_list, c_list, v_list = [], [], []
    for k, node in enumerate(net.target_nodes):
        members = net.node_members[node]
        vars_ = var_of[members].ravel()
        steps_of = np.tile(np.arange(steps), members.size)
        ok = vars_ >= 0
        r_list.append(k * steps + steps_of[ok])
        c_list.append(vars_[ok])
        v_list.append(kw[vars_[ok]])
    rows = sp.csr_matrix(
        (np.concatenate(v_list), (np.concatenate(r_list), np.concatenate(c_list))),
        shape=(len(net.target_nodes) * steps, nv),
    )
    return rows


def objective_value(p: ChargingProblem, current_a: np.ndarray) -> float:
    """The LP objective of any schedule (``sessions × steps`` [A]), e.g. the greedy one.

    Shortfall fills the cheapest segments first, slacks are the excess over each limit row and
    deviations the distance to the target, exactly as the optimal LP would set them.
    """
    w = p.weights
    x = gather(current_a, p.flat_index())
    value = float(p.i_cost_per_a @ x)
    delivered = p.energy_rows @ x
    shortfall = np.maximum(p.need_eff_kwh - delivered, 0.0)
    K = len(UNMET_SEGMENT_SLOPES)
    seg = p.need_eff_kwh / K
    for k, slope in enumerate(UNMET_SEGMENT_SLOPES):
        in_seg = np.clip(shortfall - k * seg, 0.0, seg)
        value += w.unmet_per_kwh * slope * float(in_seg.sum())
    value += (
        w.slack_per_unit_h * p.dt_h * float(np.maximum(p.limit_rows @ x - p.limit_rhs, 0).sum())
    )
    value += w.target_per_kwh * p.dt_h * float(np.abs(p.target_rows @ x - p.target_kw).sum())
    return value
