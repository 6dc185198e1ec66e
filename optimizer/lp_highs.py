"""The direct-HiGHS twin: the same LP/MILP as :mod:`optimizer.lp_pyomo`, built from numpy arrays.

Column layout: ``[i (currents) | u (shortfall segments) | σ (limit slacks) | d⁺ | d⁻ | z]``.
Row layout: ``[energy balance (=) | limits (≤) | target tracking (=) | pause on/off (≥, ≤)]``.
The equations are in ``docs/objective.md``. The live :class:`HighsTwin` keeps the solver state so
that a bound change re-solves warm from the previous basis.

The HiGHS model holds only the columns that can be nonzero: a column whose bounds fix it at 0
(the cells after the greedy anchor fills a car, idle cells, the shortfall of a car the anchor
fills) adds nothing to any row or to the objective, and at 16,000 connectors two columns in
three are such. Presolve removes them from a cold solve, but a warm re-solve starts from a
basis without presolve, and there every run and every simplex iteration would carry them
(docs/scale.md). ``HighsTwin.cols`` maps the model's columns to the layout.
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


def _zero_fixed(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Columns whose bounds fix them at 0: the LP is the same without them."""
    return (lo == 0.0) & (hi == 0.0)


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

        # the model holds only the columns that can be nonzero (see ``cols``)
        cols = np.flatnonzero(~_zero_fixed(col_lo, col_hi))
        A_model = A[:, cols]
        lp = highspy.HighsLp()
        lp.num_col_ = cols.size
        lp.num_row_ = A.shape[0]
        lp.col_cost_ = cost[cols]
        lp.col_lower_ = col_lo[cols]
        lp.col_upper_ = col_hi[cols]
        lp.row_lower_ = row_lo
        lp.row_upper_ = row_hi
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A_model.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A_model.indices.astype(np.int32)
        lp.a_matrix_.value_ = A_model.data
        lp.a_matrix_.num_col_ = cols.size
        lp.a_matrix_.num_row_ = A.shape[0]
        if n_b:
            integrality = np.zeros(ncol, dtype=np.int32)
            integrality[self.off_z :] = 1
            lp.integrality_ = [highspy.HighsVarType(int(v)) for v in integrality[cols]]
        self.is_mip = n_b > 0
        self.h.passModel(lp)
        self._a = A
        self.cols = cols
        self._pos = np.full(ncol, -1, dtype=np.int64)
        self._pos[cols] = np.arange(cols.size)
        self._dual: np.ndarray | None = None
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
        solve is warm. Returns whether anything changed (else the model's optimum holds).

        Columns that became fixed at 0 leave the model when they are surely non-basic (a
        nonzero reduced cost in the last optimum), and columns that may be nonzero again come
        back (non-basic at a bound): HiGHS keeps the basis of the other columns."""
        if problem.binary_vars.size or self.p.binary_vars.size:
            raise ValueError("problem: a model with binaries is rebuilt, not updated")
        self.p = problem
        for name, value in WARM_OPTIONS.items():
            self.h.setOptionValue(name, value)
        cost, col_lo, col_hi = self._column_vectors()
        zero = _zero_fixed(col_lo, col_hi)
        present = self._pos >= 0
        n_drop = 0
        if self._dual is not None:
            # non-basic for sure: a basic column's reduced cost is exactly 0
            dual = np.zeros(self.ncol)
            dual[self.cols] = self._dual
            drop = np.flatnonzero(present & zero & (dual != 0.0))
            n_drop = drop.size
            if n_drop:
                at = np.sort(self._pos[drop]).astype(np.int32)
                self.h.deleteCols(int(at.size), at)
                self.cols = np.delete(self.cols, at)
                self._pos[drop] = -1
                self._pos[self.cols] = np.arange(self.cols.size)
                present[drop] = False
        self._dual = None
        # only the entries that changed go to HiGHS (a DR step moves a few hundred bounds of
        # a hundred thousand)
        idx = np.flatnonzero(present & (cost != self._cost))
        n_cost = idx.size
        if n_cost:
            at, idx = self._model_order(idx)
            self.h.changeColsCost(int(at.size), at, cost[idx])
        idx = np.flatnonzero(present & ((col_lo != self._col_lo) | (col_hi != self._col_hi)))
        n_col = idx.size
        if n_col:
            at, idx = self._model_order(idx)
            self.h.changeColsBounds(int(at.size), at, col_lo[idx], col_hi[idx])
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
        n_add = self._add_columns(np.flatnonzero(~present & ~zero))
        return bool(n_cost or n_col or rows.size or n_add or n_drop)

    def _model_order(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model positions of the (present) columns ``idx``, ascending as HiGHS wants them, and
        the columns in that order."""
        at = self._pos[idx]
        order = np.argsort(at, kind="stable")
        return at[order].astype(np.int32), idx[order]

    def _add_columns(self, idx: np.ndarray) -> int:
        """Put the absent columns ``idx`` back into the model, with their current cost and
        bounds (HiGHS makes them non-basic at a bound)."""
        if idx.size == 0:
            return 0
        block = self._a[:, idx]
        self.h.addCols(
            int(idx.size),
            self._cost[idx],
            self._col_lo[idx],
            self._col_hi[idx],
            int(block.nnz),
            block.indptr[:-1].astype(np.int32),
            block.indices.astype(np.int32),
            block.data,
        )
        self._pos[idx] = np.arange(self.cols.size, self.cols.size + idx.size)
        self.cols = np.concatenate([self.cols, idx])
        self._dual = None  # the last optimum's reduced costs no longer match the columns
        return int(idx.size)

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
        present = self._pos[var] >= 0
        at, idx = self._model_order(var[present])
        if at.size:
            self.h.changeColsBounds(
                int(at.size), at, self._col_lo[idx].astype(float), self._col_hi[idx]
            )
        self._add_columns(var[~present & ~_zero_fixed(self._col_lo[var], self._col_hi[var])])

    def solve(self) -> LpSolution:
        t0 = time.perf_counter()
        self.h.run()
        elapsed = time.perf_counter() - t0
        status = self.h.getModelStatus()
        info = self.h.getInfo()
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        nv = self.p.n_vars
        if status == highspy.HighsModelStatus.kModelEmpty:
            # nothing to decide (e.g. a part whose cars are all full); HiGHS says so for any
            # model without columns, so the rows must hold at 0
            self._dual = None
            at_zero = bool(np.all(self._row_lo <= 1e-9) and np.all(self._row_hi >= -1e-9))
            if not at_zero:
                return LpSolution(np.zeros(nv), "failed", float("nan"), None, elapsed, np.zeros(0))
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
            self._dual = None
            return LpSolution(np.zeros(nv), state, float("nan"), None, elapsed, np.zeros(0))
        solution = self.h.getSolution()
        col = np.zeros(self.ncol)
        col[self.cols] = solution.col_value
        # reduced costs of an optimum tell which columns are surely non-basic (``update``)
        usable = state == "optimal" and not self.is_mip
        self._dual = np.asarray(solution.col_dual) if usable else None
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
