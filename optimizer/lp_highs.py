"""The direct-HiGHS twin: the same LP/MILP as :mod:`optimizer.lp_pyomo`, built from numpy arrays.

Column layout: ``[i (currents) | u (shortfall segments) | σ (limit slacks) | d⁺ | d⁻ | z]``.
Row layout: ``[energy balance (=) | limits (≤) | target tracking (=) | pause on/off (≥, ≤)]``.
The equations are in ``docs/objective.md``. The live :class:`HighsTwin` keeps the solver state so
that a bound change re-solves warm from the previous basis.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from optimizer.problem import UNMET_SEGMENT_SLOPES, ChargingProblem

_INF = highspy.kHighsInf


def _silence_banner() -> None:
    """HiGHS prints a licence banner to the C-level stdout the first time a solver is made in a
    process; make that first one with stdout pointed at /dev/null so schedules and tables stay
    clean. Later instances print nothing (``output_flag`` is off)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


with contextlib.suppress(OSError):  # no file descriptors to juggle (embedded interpreters)
    _silence_banner()


@dataclass
class LpSolution:
    """Result of one solve.

    Attributes
    ----------
    x : numpy.ndarray
        Currents [A] per variable of the problem.
    status : str
        ``optimal``, ``time_limit`` (a solution exists, not proven optimal) or ``failed``.
    objective : float
    gap : float | None
        Relative gap to the best bound (0 for a proven LP optimum).
    time_s : float
        Wall time of the solve [s].
    slack : numpy.ndarray
        Excess over each limit row [A] or [kW].
    """

    x: np.ndarray
    status: str
    objective: float
    gap: float | None
    time_s: float
    slack: np.ndarray


def objective_columns(p: ChargingProblem) -> dict[str, np.ndarray]:
    """Objective coefficient of every column block (shared with the pyomo model's docs)."""
    w = p.weights
    n_e = p.energy_session.size
    seg = np.tile(np.asarray(UNMET_SEGMENT_SLOPES) * w.unmet_per_kwh, n_e)
    n_t = p.target_kw.size
    return {
        "i": p.i_cost_per_a,
        "u": seg,
        "slack": np.full(p.limit_rhs.size, w.slack_per_unit_h * p.dt_h),
        "dev": np.full(2 * n_t, w.target_per_kwh * p.dt_h),
    }


WARM_OPTIONS: dict[str, float] = {"dual_simplex_cost_perturbation_multiplier": 0.0}
"""Options of a re-solve from the previous basis after an in-place update. The dual simplex
perturbs the costs of a solve by default, against stalling on degenerate vertices; from an
optimal basis a change needs a few hundred iterations, and removing the perturbation at the
end took up to a tenth of them as primal simplex iterations (each one pricing every column).
The costs carry their own tie-breaking (:mod:`optimizer.problem`), so warm solves go
unperturbed (docs/scale.md)."""


class HighsTwin:
    """A live HiGHS model of a :class:`ChargingProblem`.

    Parameters
    ----------
    problem : ChargingProblem
    time_limit_s : float | None
        Wall-clock budget of each solve [s].
    mip_rel_gap : float
        Relative gap at which a MILP solve stops.
    threads : int | None
        HiGHS threads (default: HiGHS' own choice).
    """

    name = "highs"

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
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        if time_limit_s is not None:
            self.h.setOptionValue("time_limit", float(time_limit_s))
        self.h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        if threads is not None:
            self.h.setOptionValue("threads", int(threads))
        self._pass_model()
        self.build_time_s = time.perf_counter() - t0

    # -- model --------------------------------------------------------------------------------
    def _pass_model(self) -> None:
        p = self.p
        nv = p.n_vars
        K = len(UNMET_SEGMENT_SLOPES)
        n_e = p.energy_session.size
        n_l = p.limit_rhs.size
        n_t = p.target_kw.size
        n_b = p.binary_vars.size
        self.off_u = nv
        self.off_s = self.off_u + n_e * K
        self.off_d = self.off_s + n_l
        self.off_z = self.off_d + 2 * n_t
        ncol = self.off_z + n_b
        self.ncol = ncol

        cost, col_lo, col_hi = self._column_vectors()
        blocks = [
            self._energy_block(n_e, K),
            self._limit_block(n_l),
            self._target_block(n_t),
            self._pause_block(n_b),
        ]
        A = sp.vstack([b[0] for b in blocks], format="csc")
        row_lo = np.concatenate([b[1] for b in blocks])
        row_hi = np.concatenate([b[2] for b in blocks])

        lp = highspy.HighsLp()
        lp.num_col_ = ncol
        lp.num_row_ = A.shape[0]
        lp.col_cost_ = cost
        lp.col_lower_ = col_lo
        lp.col_upper_ = col_hi
        lp.row_lower_ = row_lo
        lp.row_upper_ = row_hi
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data
        lp.a_matrix_.num_col_ = ncol
        lp.a_matrix_.num_row_ = A.shape[0]
        if n_b:
            integrality = np.zeros(ncol, dtype=np.int32)
            integrality[self.off_z :] = 1
            lp.integrality_ = [highspy.HighsVarType(int(v)) for v in integrality]
        self.is_mip = n_b > 0
        self.h.passModel(lp)
        # what the model holds now, so that an update passes only what changed
        self._cost, self._col_lo, self._col_hi = cost, col_lo.copy(), col_hi.copy()
        n_rows = n_e + n_l + n_t
        self._row_lo, self._row_hi = row_lo[:n_rows].copy(), row_hi[:n_rows].copy()

    def _column_vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cost, lower and upper bound of every column."""
        p = self.p
        K = len(UNMET_SEGMENT_SLOPES)
        n_e, n_l = p.energy_session.size, p.limit_rhs.size
        n_t, n_b = p.target_kw.size, p.binary_vars.size
        costs = objective_columns(p)
        cost = np.concatenate([costs["i"], costs["u"], costs["slack"], costs["dev"], np.zeros(n_b)])
        col_lo = np.concatenate([p.i_lo_a, np.zeros(n_e * K + n_l + 2 * n_t + n_b)])
        col_hi = np.concatenate([p.i_hi_a, p.u_hi_kwh, np.full(n_l + 2 * n_t, _INF), np.ones(n_b)])
        return cost, col_lo, col_hi

    def update(self, problem: ChargingProblem) -> bool:
        """Take over the bounds, costs and right-hand sides of ``problem``, which must have the
        same columns, rows and matrix as the model's (no binaries); the basis stays, so the next
        solve is warm. Returns whether anything changed (else the model's optimum holds)."""
        if problem.binary_vars.size or self.p.binary_vars.size:
            raise ValueError("problem: a model with binaries is rebuilt, not updated")
        self.p = problem
        for name, value in WARM_OPTIONS.items():
            self.h.setOptionValue(name, value)
        cost, col_lo, col_hi = self._column_vectors()
        # only the entries that changed go to HiGHS (a DR step moves a few hundred bounds of
        # a hundred thousand)
        idx = np.nonzero(cost != self._cost)[0].astype(np.int32)
        n_cost = idx.size
        if n_cost:
            self.h.changeColsCost(int(idx.size), idx, cost[idx])
        idx = np.nonzero((col_lo != self._col_lo) | (col_hi != self._col_hi))[0].astype(np.int32)
        n_col = idx.size
        if n_col:
            self.h.changeColsBounds(int(idx.size), idx, col_lo[idx], col_hi[idx])
        n_l = problem.limit_rhs.size
        row_lo = np.concatenate([problem.need_eff_kwh, np.full(n_l, -_INF), problem.target_kw])
        row_hi = np.concatenate([problem.need_eff_kwh, problem.limit_rhs, problem.target_kw])
        rows = np.nonzero((row_lo != self._row_lo) | (row_hi != self._row_hi))[0].astype(np.int32)
        if rows.size:
            # in highspy, though missing from its type stubs
            self.h.changeRowsBounds(  # type: ignore[attr-defined]
                int(rows.size), rows, row_lo[rows], row_hi[rows]
            )
        self._cost, self._col_lo, self._col_hi = cost, col_lo, col_hi
        self._row_lo, self._row_hi = row_lo, row_hi
        return bool(n_cost or n_col or rows.size)

    def _pad(self, left: sp.spmatrix, blocks: list[tuple[int, sp.spmatrix]]) -> sp.csr_matrix:
        """Place column blocks at their offsets in a row block."""
        rows = left.shape[0]
        parts = [(left.tocoo(), 0)] + [(blk.tocoo(), off) for off, blk in blocks]
        r = np.concatenate([q.row for q, _ in parts])
        c = np.concatenate([q.col + off for q, off in parts])
        v = np.concatenate([q.data for q, _ in parts])
        return sp.csr_matrix((v, (r, c)), shape=(rows, self.ncol))

    def _energy_block(self, n_e: int, K: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """``Σ_t kwh_per_a · i[s,t] + Σ_k u[s,k] = need_eff[s]``."""
        seg = sp.csr_matrix(
            (np.ones(n_e * K), (np.repeat(np.arange(n_e), K), np.arange(n_e * K))),
            shape=(n_e, n_e * K),
        )
        A = self._pad(self.p.energy_rows, [(self.off_u, seg)])
        return A, self.p.need_eff_kwh, self.p.need_eff_kwh

    def _limit_block(self, n_l: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """``Σ coef · i − σ ≤ limit`` per (group, step)."""
        A = self._pad(self.p.limit_rows, [(self.off_s, -sp.identity(n_l, format="csr"))])
        return A, np.full(n_l, -_INF), self.p.limit_rhs

    def _target_block(self, n_t: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """``Σ p − d⁺ + d⁻ = target`` per (target node, step)."""
        eye = sp.identity(n_t, format="csr")
        dev = sp.hstack([-eye, eye], format="csr")
        A = self._pad(self.p.target_rows, [(self.off_d, dev)])
        return A, self.p.target_kw, self.p.target_kw

    def _pause_block(self, n_b: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """``i − req·z ≥ 0`` and ``i − hi·z ≤ 0`` for pause-consent variables."""
        p = self.p
        nv = p.n_vars
        b = p.binary_vars
        k = np.arange(n_b)
        on = sp.csr_matrix((np.ones(n_b), (k, b)), shape=(n_b, nv))
        lo = self._pad(on, [(self.off_z, sp.csr_matrix((-p.i_req_a[b], (k, k)), shape=(n_b, n_b)))])
        hi = self._pad(on, [(self.off_z, sp.csr_matrix((-p.i_hi_a[b], (k, k)), shape=(n_b, n_b)))])
        A = sp.vstack([lo, hi], format="csr") if n_b else sp.csr_matrix((0, self.ncol))
        row_lo = np.concatenate([np.zeros(n_b), np.full(n_b, -_INF)])
        row_hi = np.concatenate([np.full(n_b, _INF), np.zeros(n_b)])
        return A, row_lo, row_hi

    # -- solving ------------------------------------------------------------------------------
    def set_current_lower(self, var: np.ndarray, lo_a: np.ndarray) -> None:
        """Raise the lower bounds of some currents (warm start keeps the basis)."""
        if var.size == 0:
            return
        self.p.i_lo_a[var] = lo_a
        self._col_lo[var] = lo_a
        self.h.changeColsBounds(
            int(var.size), var.astype(np.int32), lo_a.astype(float), self.p.i_hi_a[var]
        )

    def solve(self) -> LpSolution:
        t0 = time.perf_counter()
        self.h.run()
        elapsed = time.perf_counter() - t0
        status = self.h.getModelStatus()
        info = self.h.getInfo()
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        nv = self.p.n_vars
        if status == highspy.HighsModelStatus.kModelEmpty:
            # nothing to decide (e.g. a part whose cars are all full)
            return LpSolution(np.zeros(nv), "optimal", 0.0, 0.0, elapsed, np.zeros(0))
        if status == highspy.HighsModelStatus.kOptimal:
            state = "optimal"
        elif has_sol and status in (
            highspy.HighsModelStatus.kTimeLimit,
            highspy.HighsModelStatus.kIterationLimit,
            highspy.HighsModelStatus.kInterrupt,
        ):
            state = "time_limit"
        else:
            state = "failed"
        if state == "failed":
            return LpSolution(np.zeros(nv), state, float("nan"), None, elapsed, np.zeros(0))
        col = np.asarray(self.h.getSolution().col_value)
        gap: float | None = float(info.mip_gap) if self.is_mip else 0.0
        if state != "optimal" and not self.is_mip:
            gap = None
        return LpSolution(
            x=col[:nv].copy(),
            status=state,
            objective=float(info.objective_function_value),
            gap=gap,
            time_s=elapsed,
            slack=col[self.off_s : self.off_d].copy(),
        )
