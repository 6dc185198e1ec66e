"""The readable scheduling model in pyomo, solved with HiGHS.

The build is a flat recipe (variables, then one ``add_*`` call per constraint family, then the
objective). Each family's equation and units are in its docstring and in ``docs/objective.md``.
:mod:`optimizer.lp_highs` builds the same model straight from the arrays for speed; a test proves
that both reach the same objective.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.base import TerminationCondition
from pyomo.contrib.appsi.solvers import Highs as AppsiHighs

from optimizer.lp_highs import LpSolution, objective_columns
from optimizer.problem import UNMET_SEGMENT_SLOPES, ChargingProblem


def _row_expr(m: pyo.ConcreteModel, rows: Any, r: int) -> Any:
    lo, hi = rows.indptr[r], rows.indptr[r + 1]
    return pyo.quicksum(
        float(c) * m.i[int(j)] for j, c in zip(rows.indices[lo:hi], rows.data[lo:hi], strict=True)
    )


def create_model(p: ChargingProblem) -> pyo.ConcreteModel:
    """Variables, constraint families and objective of the scheduling problem."""
    m = pyo.ConcreteModel(name="gridcharge")
    m.V = pyo.RangeSet(0, p.n_vars - 1)
    m.i = pyo.Var(m.V, bounds=lambda _m, j: (float(p.i_lo_a[j]), float(p.i_hi_a[j])))
    add_energy_balance(m, p)
    for kind in ("station_phase_limit", "node_phase_limit", "node_power_limit", "dso_cap"):
        add_limit_family(m, p, kind)
    add_target_tracking(m, p)
    add_pause_consent(m, p)
    set_objective(m, p)
    return m


def add_energy_balance(m: pyo.ConcreteModel, p: ChargingProblem) -> None:
    """Energy of each session with its shortfall segments.

    ``Σ_t i[s,t] · n_s · V/1000 · Δt + Σ_k u[s,k] = E_s``,  ``0 ≤ u[s,k] ≤ E_s / K``  [kWh]

    where ``E_s`` is the need (or what the car could take at most when it gave none).
    """
    K = len(UNMET_SEGMENT_SLOPES)
    n_e = p.energy_session.size
    m.E = pyo.RangeSet(0, n_e - 1) if n_e else pyo.Set(initialize=[])
    m.K = pyo.RangeSet(0, K - 1)
    m.u = pyo.Var(m.E, m.K, bounds=lambda _m, e, k: (0.0, float(p.u_hi_kwh[e * K + k])))
    rows = p.energy_rows

    def rule(_m: pyo.ConcreteModel, e: int) -> object:
        return _row_expr(m, rows, e) + sum(m.u[e, k] for k in m.K) == float(p.need_eff_kwh[e])

    m.energy_balance = pyo.Constraint(m.E, rule=rule)


def add_limit_family(m: pyo.ConcreteModel, p: ChargingProblem, kind: str) -> None:
    """One family of group limits, softened by a heavily penalised slack ``σ ≥ 0``.

    - ``station_phase_limit``: ``Σ_{s at station, on phase φ} i[s,t] − σ ≤ I_station[t]`` [A]
    - ``node_phase_limit``:    ``Σ_{s below node, on phase φ} i[s,t] − σ ≤ I_node[t]`` [A]
    - ``node_power_limit``:    ``Σ_{s below node} i[s,t] · n_s · V/1000 − σ ≤ P_node[t]`` [kW]
    - ``dso_cap``:             ``Σ_{s below node} i[s,t] · n_s · V/1000 − σ ≤ cap[t]`` [kW]
    """
    assert p.net is not None, "the pyomo model is built for a whole problem"
    kinds = np.asarray(p.net.groups.kind, dtype=object)
    if kinds.size == 0:
        rows_of_kind = np.zeros(0, dtype=np.int64)
    else:
        rows_of_kind = np.nonzero(kinds[p.limit_group] == kind)[0]
    if not hasattr(m, "slack"):
        m.L = pyo.RangeSet(0, p.limit_rhs.size - 1) if p.limit_rhs.size else pyo.Set(initialize=[])
        m.slack = pyo.Var(m.L, within=pyo.NonNegativeReals)
    idx = [int(r) for r in rows_of_kind]
    rows = p.limit_rows

    def rule(_m: pyo.ConcreteModel, r: int) -> object:
        return _row_expr(m, rows, r) - m.slack[r] <= float(p.limit_rhs[r])

    setattr(m, f"{kind}_rows", pyo.Set(initialize=idx))
    setattr(m, kind, pyo.Constraint(getattr(m, f"{kind}_rows"), rule=rule))


def add_target_tracking(m: pyo.ConcreteModel, p: ChargingProblem) -> None:
    """Deviation from a DSO target [kW].

    ``Σ_{s below n} p[s,t] − d⁺[n,t] + d⁻[n,t] = target[n,t]``
    """
    n_t = p.target_kw.size
    m.Tr = pyo.RangeSet(0, n_t - 1) if n_t else pyo.Set(initialize=[])
    m.dev_up = pyo.Var(m.Tr, within=pyo.NonNegativeReals)
    m.dev_down = pyo.Var(m.Tr, within=pyo.NonNegativeReals)
    rows = p.target_rows

    def rule(_m: pyo.ConcreteModel, r: int) -> object:
        return _row_expr(m, rows, r) - m.dev_up[r] + m.dev_down[r] == float(p.target_kw[r])

    m.target_tracking = pyo.Constraint(m.Tr, rule=rule)


def add_pause_consent(m: pyo.ConcreteModel, p: ChargingProblem) -> None:
    """Semi-continuous current of pause-consent sessions: ``i = 0`` or ``i_req ≤ i ≤ i_max``.

    ``i[s,t] ≥ i_req · z[s,t]``,  ``i[s,t] ≤ i_max · z[s,t]``,  ``z ∈ {0, 1}``.
    """
    b = [int(j) for j in p.binary_vars]
    m.B = pyo.Set(initialize=b)
    m.z = pyo.Var(m.B, within=pyo.Binary)
    m.pause_on = pyo.Constraint(m.B, rule=lambda _m, j: m.i[j] >= float(p.i_req_a[j]) * m.z[j])
    m.pause_max = pyo.Constraint(m.B, rule=lambda _m, j: m.i[j] <= float(p.i_hi_a[j]) * m.z[j])


def set_objective(m: pyo.ConcreteModel, p: ChargingProblem) -> None:
    """Minimise shortfall (convex, fair), slack, target deviation, then price and lateness.

    ``Σ_s Σ_k W_u·slope_k·u[s,k] + Σ W_σ·Δt·σ + Σ W_d·Δt·(d⁺ + d⁻) + Σ c[s,t]·i[s,t]``
    with ``c[s,t] = kwh_per_a · (W_front · (t − a_s + 1)/stay_s + W_price · price_t / 1000)``.
    """
    c = objective_columns(p)
    K = len(UNMET_SEGMENT_SLOPES)
    seg = c["u"]
    n_t = p.target_kw.size
    expr = pyo.quicksum(float(c["i"][j]) * m.i[j] for j in m.V)
    expr += pyo.quicksum(float(seg[e * K + k]) * m.u[e, k] for e in m.E for k in m.K)
    expr += pyo.quicksum(float(c["slack"][r]) * m.slack[r] for r in m.L)
    expr += pyo.quicksum(
        float(c["dev"][r]) * m.dev_up[r] + float(c["dev"][n_t + r]) * m.dev_down[r] for r in m.Tr
    )
    m.objective = pyo.Objective(expr=expr, sense=pyo.minimize)


class PyomoTwin:
    """A live pyomo model solved with HiGHS through pyomo's persistent APPSI interface."""

    name = "pyomo+highs"

    def __init__(
        self,
        problem: ChargingProblem,
        *,
        time_limit_s: float | None = None,
        mip_rel_gap: float = 1e-4,
        threads: int | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.p = problem
        self.m = create_model(problem)
        self.build_time_s = time.perf_counter() - t0
        self.solver = AppsiHighs()
        self.solver.config.load_solution = True
        self.solver.config.stream_solver = False
        if time_limit_s is not None:
            self.solver.config.time_limit = float(time_limit_s)
        self.solver.config.mip_gap = float(mip_rel_gap)
        if threads is not None:
            self.solver.highs_options["threads"] = int(threads)
        self.is_mip = problem.binary_vars.size > 0

    def set_current_lower(self, var: np.ndarray, lo_a: np.ndarray) -> None:
        for j, v in zip(var, lo_a, strict=True):
            self.m.i[int(j)].setlb(float(v))
        self.p.i_lo_a[var] = lo_a

    def solve(self) -> LpSolution:
        t0 = time.perf_counter()
        self.solver.config.load_solution = False
        res = self.solver.solve(self.m)
        elapsed = time.perf_counter() - t0
        nv = self.p.n_vars
        tc = res.termination_condition
        if tc == TerminationCondition.optimal:
            state = "optimal"
        elif res.best_feasible_objective is not None and tc in (
            TerminationCondition.maxTimeLimit,
            TerminationCondition.maxIterations,
        ):
            state = "time_limit"
        else:
            return LpSolution(np.zeros(nv), "failed", float("nan"), None, elapsed, np.zeros(0))
        res.solution_loader.load_vars()
        x = np.array([pyo.value(self.m.i[j]) for j in range(nv)], dtype=float)
        slack = np.array([pyo.value(self.m.slack[r]) for r in self.m.L], dtype=float)
        obj = float(res.best_feasible_objective)
        gap: float | None = 0.0
        if self.is_mip or state != "optimal":
            bound = res.best_objective_bound
            gap = (
                abs(obj - bound) / max(abs(obj), 1e-9)
                if bound is not None and np.isfinite(bound)
                else None
            )
        return LpSolution(x, state, obj, gap, elapsed, slack)
