"""Demand-response fast path: which sessions drop to their minimum current, and until when.

No optimisation is in the way: every function here is a vectorised numpy expression over the
active sessions (no per-session Python loop), so a signal for 16,000 sessions is answered in a
few milliseconds. The equations are in ``docs/demand-response.md``:

- **Restore time** (:func:`restore_time`): the end of the imbalance settlement period (the next
  local quarter hour HH:00/15/30/45 strictly after the signal), or the signal's ``end`` when that
  is earlier, and never more than :data:`MAX_ACTIVATION_S` after the signal.
- **Released power** (:func:`released_kw`): ``(i_now − i_min) · n_phases · V / 1000`` [kW] for a
  session above its minimum, else 0.
- **Budget** (:func:`budget_duration_s`): a session is never curtailed for more than ``B`` in
  any rolling window of :data:`WINDOW_S`; the longest new curtailment from the signal on is the
  largest ``x`` with ``x + P(x) ≤ B``, ``P(x)`` being its earlier curtailment inside
  ``[x − W, 0]``.
- **Eligibility** (:func:`skip_reasons`) and the **fair order** of a partial activation
  (:func:`fair_order`).
- :func:`activate` combines them.

Times in arrays are seconds relative to the signal [s] (negative = before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from optimizer.errors import GridchargeError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

ISP_S = 900
"""Imbalance settlement period [s] (15 minutes, aligned to local quarter hours)."""
MAX_ACTIVATION_S = 900
"""Longest curtailment of one activation [s]."""
WINDOW_S = 4 * 3600
"""Rolling window of the curtailment budget [s]."""
DEFAULT_BUDGET_MIN = 30.0
"""Default curtailment budget per rolling window [min]."""
MIN_DURATION_S = 60.0
"""A session whose budget allows less than this is not curtailed at all [s]: two profile
changes for a few seconds of curtailment would release almost nothing."""
ATOL_A = 1e-3
"""A session within this of its minimum is already at its minimum [A]."""
BISECTION_ROUNDS = 24
"""Rounds of the vectorised bisection of the budget equation (900 s / 2**24 ≈ 54 µs)."""

SKIP_REASONS = (
    "opt_out",
    "no_consent",
    "already_curtailed",
    "at_minimum",
    "budget_exhausted",
    "not_needed",
)
"""Why a session is not curtailed, in order of precedence (a session gets the first that
applies). ``not_needed``: eligible, but a partial activation reached its target without it."""
CHOSEN = -1
"""Reason code of a curtailed session."""


class FastPathError(GridchargeError, ValueError):
    """Bad input to the fast path; the message names the field and value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {value!r})")


def _aware(t: datetime, field: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise FastPathError(field, t.isoformat(), "must carry a UTC offset")
    return t.astimezone(UTC)


def isp_end(t: datetime, tz: str | ZoneInfo = "Europe/Amsterdam") -> datetime:
    """End of the imbalance settlement period containing ``t``: the next quarter hour of local
    time strictly after ``t`` (a signal at exactly HH:15 runs until HH:30).

    The quarter hours are those of the local wall clock at ``t`` (offset ``o``):
    ``end = ⌊(t + o) / 900⌋ · 900 + 900 − o``. Daylight-saving changes happen at a full hour,
    which is a quarter hour under both offsets, so the result is right across a change too.

    Parameters
    ----------
    t : datetime
        Aware time of the signal.
    tz : str or ZoneInfo
        The grid's time zone.

    Returns
    -------
    datetime
        The boundary, in UTC.
    """
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    t = _aware(t, "signal_at")
    offset = t.astimezone(zone).utcoffset()
    assert offset is not None
    off_s = offset.total_seconds()
    local_s = t.timestamp() + off_s
    boundary = (local_s // ISP_S) * ISP_S + ISP_S - off_s
    return datetime.fromtimestamp(boundary, UTC)


def restore_time(
    signal_at: datetime, end: datetime | None = None, tz: str | ZoneInfo = "Europe/Amsterdam"
) -> datetime:
    """When curtailed sessions come back: ``min(isp_end(signal_at), end, signal_at + 15 min)``.

    Raises
    ------
    FastPathError
        ``end`` is not after ``signal_at`` (field ``end``).
    """
    at = _aware(signal_at, "signal_at")
    out = min(isp_end(at, tz), at + timedelta(seconds=MAX_ACTIVATION_S))
    if end is not None:
        end_utc = _aware(end, "end")
        if end_utc <= at:
            raise FastPathError("end", end.isoformat(), "must be after the signal time")
        out = min(out, end_utc)
    return out


def released_kw(
    i_now_a: FloatArray, min_a: FloatArray, n_phases: FloatArray, voltage_v: float
) -> FloatArray:
    """Power each session releases when set to its minimum [kW].

    ``ΔP_s = max(i_now_s − i_min_s, 0) · n_s · V / 1000``.

    Parameters
    ----------
    i_now_a : array
        Current per phase now [A].
    min_a : array
        Station minimum current [A].
    n_phases : array
        Phases the car draws on (1 or 3).
    voltage_v : float
        Phase voltage [V].
    """
    return np.maximum(i_now_a - min_a, 0.0) * n_phases * (voltage_v / 1000.0)


def window_used_s(
    n: int,
    log_session: IntArray,
    log_start_s: FloatArray,
    log_end_s: FloatArray,
    x_s: FloatArray,
    window_s: float = WINDOW_S,
) -> FloatArray:
    """Earlier curtailment of each session inside ``[x − W, 0]`` [s].

    ``P_s(x) = Σ_k max(0, min(b_k, 0) − max(a_k, x_s − W))`` over the log entries ``k`` of
    session ``s`` with interval ``[a_k, b_k]`` (relative to the signal).

    Parameters
    ----------
    n : int
        Number of sessions.
    log_session : array of int
        Session index of every log entry.
    log_start_s, log_end_s : array
        Start and end of every logged curtailment [s] relative to the signal.
    x_s : array
        Per session, the end of the window [s] relative to the signal.
    window_s : float
        Window length [s].
    """
    if log_session.size == 0:
        return np.zeros(n)
    lo = np.maximum(log_start_s, x_s[log_session] - window_s)
    hi = np.minimum(log_end_s, 0.0)
    used = np.bincount(log_session, weights=np.maximum(hi - lo, 0.0), minlength=n)[:n]
    return used.astype(np.float64)


def budget_duration_s(
    budget_s: FloatArray,
    log_session: IntArray,
    log_start_s: FloatArray,
    log_end_s: FloatArray,
    horizon_s: float,
    window_s: float = WINDOW_S,
) -> FloatArray:
    """Longest curtailment from the signal on that keeps every rolling window within budget [s].

    A curtailment ``[0, x]`` adds ``x`` to every window ending at ``τ ∈ [0, x]``; the fullest of
    them is the one ending at ``x``, so the rule is ``f(x) = x + P(x) ≤ B`` with ``P`` from
    :func:`window_used_s`. ``P`` falls with slope at most 1 as old curtailment leaves the window,
    so ``f`` is non-decreasing and the answer is the largest ``x ∈ [0, horizon]`` with
    ``f(x) ≤ B``, found by a vectorised bisection and rounded down to whole seconds
    (0 when ``f(0) ≥ B``).

    Parameters
    ----------
    budget_s : array
        Budget ``B`` of every session per window [s].
    log_session, log_start_s, log_end_s : array
        Earlier curtailments (see :func:`window_used_s`); they must end by the signal.
    horizon_s : float
        The activation's own limit [s] (restore time − signal time).
    window_s : float
        Window length [s].
    """
    n = budget_s.size
    zeros = np.zeros(n)
    full = np.full(n, float(horizon_s))
    f_full = full + window_used_s(n, log_session, log_start_s, log_end_s, full, window_s)
    out = np.where(f_full <= budget_s, full, 0.0)
    todo = np.flatnonzero(f_full > budget_s)
    if todo.size == 0:
        return out
    lo = zeros[todo].copy()
    hi = full[todo].copy()
    used0 = window_used_s(n, log_session, log_start_s, log_end_s, zeros, window_s)[todo]
    keep = used0 < budget_s[todo]
    # restrict the log to the sessions that need the bisection
    sub = np.full(n, -1, dtype=np.int64)
    sub[todo] = np.arange(todo.size)
    in_log = sub[log_session] >= 0
    ls, la, lb = sub[log_session[in_log]], log_start_s[in_log], log_end_s[in_log]
    b = budget_s[todo]
    for _ in range(BISECTION_ROUNDS):
        mid = 0.5 * (lo + hi)
        ok = mid + window_used_s(todo.size, ls, la, lb, mid, window_s) <= b
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    # whole seconds: the bisection ends just below an exact root, so try the next second up
    cand = np.floor(lo + 1e-3)
    over = cand + window_used_s(todo.size, ls, la, lb, cand, window_s) > b + 1e-6
    cand = np.maximum(cand - over, 0.0)
    out[todo] = np.where(keep, cand, 0.0)
    return out


def budget_ahead_s(
    budget_s: FloatArray,
    log_session: IntArray,
    log_start_s: FloatArray,
    log_end_s: FloatArray,
    at_s: FloatArray,
    horizon_s: FloatArray,
    window_s: float = WINDOW_S,
) -> FloatArray:
    """Longest curtailment each session could take from each of several later times [s].

    For a time ``τ_j`` (relative to now) the logged curtailments are shifted to it
    (``a_k − τ_j``, ``b_k − τ_j``) and :func:`budget_duration_s` gives the longest new
    curtailment from ``τ_j`` on, at most ``h_j``: a session whose rolling-window budget is spent
    at ``τ_j`` gets 0 until enough of its earlier curtailment has left the window. A session
    still held by a logged curtailment at ``τ_j`` (``a_k ≤ τ_j < b_k``) gets 0. Times after
    every logged curtailment has left the window need no log: ``min(B, h_j)``.

    Parameters
    ----------
    budget_s : array
        Budget ``B`` of every session per window [s].
    log_session, log_start_s, log_end_s : array
        Logged curtailments (session index, start and end [s] relative to now; they may end
        after now).
    at_s : array
        The times ``τ_j`` [s] relative to now (≥ 0).
    horizon_s : array
        The longest curtailment asked for at each time ``h_j`` [s].
    window_s : float
        Window length [s].

    Returns
    -------
    array, shape (n sessions, n times)
        Seconds [s].
    """
    n = budget_s.size
    out = np.empty((n, at_s.size))
    last_b = float(log_end_s.max()) if log_end_s.size else -np.inf
    for j, (tau, h) in enumerate(zip(at_s.tolist(), horizon_s.tolist(), strict=True)):
        if tau >= last_b + window_s:
            out[:, j] = np.clip(budget_s, 0.0, h)
            continue
        a, b = log_start_s - tau, log_end_s - tau
        held = np.zeros(n, dtype=bool)
        held[log_session[(a <= 0.0) & (b > 0.0)]] = True
        past = b <= 0.0
        x = budget_duration_s(budget_s, log_session[past], a[past], b[past], h, window_s)
        out[:, j] = np.where(held, 0.0, x)
    return out


def skip_reasons(
    i_now_a: FloatArray,
    min_a: FloatArray,
    opt_out: BoolArray,
    consent_required: BoolArray,
    consent: BoolArray,
    curtailed_now: BoolArray,
    duration_s: FloatArray,
    min_duration_s: float = MIN_DURATION_S,
) -> NDArray[np.int8]:
    """Reason code of every session (index into :data:`SKIP_REASONS`, :data:`CHOSEN` = eligible).

    In order of precedence: ``opt_out``; ``no_consent`` (its contract rule requires consent and
    it has none); ``already_curtailed`` (an earlier activation still holds it at its minimum);
    ``at_minimum`` (``i_now ≤ i_min``, nothing to release); ``budget_exhausted`` (its budget
    allows less than ``min_duration_s``; pass ``min_duration_s`` no larger than the activation
    itself, so a short activation is not mistaken for an exhausted budget).
    """
    code = np.full(i_now_a.size, CHOSEN, dtype=np.int8)
    rules = (
        opt_out,
        consent_required & ~consent,
        curtailed_now,
        i_now_a <= min_a + ATOL_A,
        duration_s < min_duration_s,
    )
    for k in range(len(rules) - 1, -1, -1):  # the first rule that applies wins
        code[rules[k]] = k
    return code


def fair_order(
    eligible: BoolArray,
    n_curtailed: IntArray,
    remaining_s: FloatArray,
    used_s: FloatArray,
    release_kw: FloatArray,
) -> IntArray:
    """Indices of the eligible sessions in the order a partial activation takes them.

    Sorted by, in turn: fewest earlier curtailments (``n_curtailed``, so a session is never
    taken a second time while an eligible one has not been taken once), most remaining budget,
    least curtailment in the window, most released power (fewer sessions reach the target), then
    index (deterministic).
    """
    idx = np.flatnonzero(eligible)
    keys = (
        idx,
        -release_kw[idx],
        used_s[idx],
        -remaining_s[idx],
        n_curtailed[idx],
    )
    return idx[np.lexsort(keys)]


@dataclass(frozen=True)
class Activation:
    """The fast path's decision for one signal.

    Attributes
    ----------
    signal_at, restore_at : datetime
        Signal time and the common restore time (UTC).
    reason : array of int8
        Per session: :data:`CHOSEN` or an index into :data:`SKIP_REASONS`.
    duration_s : array
        Per session: how long it is curtailed [s] (0 when not chosen); less than
        ``restore_at − signal_at`` where its budget runs out first.
    release_kw : array
        Per session: power released now when curtailed [kW] (0 when not chosen).
    limit_a : array
        Per session: the limit of its curtailment profile (its minimum) [A].
    target_kw : float or None
        The requested release [kW].
    """

    signal_at: datetime
    restore_at: datetime
    reason: NDArray[np.int8]
    duration_s: FloatArray
    release_kw: FloatArray
    limit_a: FloatArray
    target_kw: float | None

    @property
    def chosen(self) -> BoolArray:
        return self.reason == CHOSEN

    @property
    def released_kw(self) -> float:
        """Power released now [kW]: ``Σ_{s curtailed} (i_now − i_min) · n_s · V / 1000``."""
        return float(self.release_kw.sum())

    @property
    def target_reached(self) -> bool:
        return self.target_kw is None or self.released_kw >= self.target_kw - 1e-9

    def skipped(self) -> dict[str, int]:
        """Sessions not curtailed, per reason (every reason listed, zeros included)."""
        counts = np.bincount(self.reason[self.reason >= 0], minlength=len(SKIP_REASONS))
        return {r: int(c) for r, c in zip(SKIP_REASONS, counts, strict=True)}

    def until(self, s: int) -> datetime:
        """Restore time of session ``s`` (UTC)."""
        return self.signal_at + timedelta(seconds=float(self.duration_s[s]))


def activate(
    *,
    signal_at: datetime,
    i_now_a: FloatArray,
    min_a: FloatArray,
    n_phases: FloatArray,
    voltage_v: float,
    opt_out: BoolArray,
    consent_required: BoolArray,
    consent: BoolArray,
    budget_s: FloatArray,
    log_session: IntArray | None = None,
    log_start_s: FloatArray | None = None,
    log_end_s: FloatArray | None = None,
    n_curtailed: IntArray | None = None,
    end: datetime | None = None,
    target_kw: float | None = None,
    tz: str | ZoneInfo = "Europe/Amsterdam",
    min_duration_s: float = MIN_DURATION_S,
) -> Activation:
    """Decide an activation: eligible sessions, the chosen ones, their restore times.

    Parameters
    ----------
    signal_at : datetime
        Aware time of the signal; curtailment starts then.
    i_now_a, min_a, n_phases : array
        Current now [A], station minimum [A] and phases of every active session.
    voltage_v : float
        Phase voltage [V].
    opt_out, consent_required, consent : array of bool
        The session opted out; its contract rule requires consent; it has consent.
    budget_s : array
        Curtailment budget per rolling 4 hours [s] (contract rule ``max_curtail_min_per_4h``).
    log_session, log_start_s, log_end_s : array, optional
        Earlier curtailments (session index, start and end [s] relative to the signal). An
        entry that has not ended at the signal marks its session ``already_curtailed``.
    n_curtailed : array of int, optional
        Earlier curtailments of every session (e.g. today); the fairness key.
    end : datetime, optional
        The signal's end; must be after ``signal_at``.
    target_kw : float, optional
        Release only this much [kW] (partial activation); must be > 0.
    tz : str or ZoneInfo
        Time zone of the settlement periods.
    min_duration_s : float
        Shortest curtailment worth sending [s] (or the whole activation when that is shorter).

    Raises
    ------
    FastPathError
        A negative or zero ``target_kw``, an ``end`` not after the signal, arrays of unequal
        length, or a naive time.
    """
    n = i_now_a.size
    for name, arr in (
        ("min_a", min_a),
        ("n_phases", n_phases),
        ("opt_out", opt_out),
        ("consent_required", consent_required),
        ("consent", consent),
        ("budget_s", budget_s),
    ):
        if arr.size != n:
            raise FastPathError(name, f"{arr.size} values", f"needs one per session ({n})")
    if target_kw is not None and not target_kw > 0:
        raise FastPathError("target_kw", target_kw, "must be > 0")
    at = _aware(signal_at, "signal_at")
    restore_at = restore_time(at, end, tz)
    horizon_s = (restore_at - at).total_seconds()
    ls = np.zeros(0, dtype=np.int64) if log_session is None else log_session.astype(np.int64)
    la = np.zeros(0) if log_start_s is None else log_start_s.astype(np.float64)
    lb = np.zeros(0) if log_end_s is None else log_end_s.astype(np.float64)
    if not (ls.size == la.size == lb.size):
        raise FastPathError("log_session", f"{ls.size} entries", "log arrays differ in length")
    ongoing = lb > 0.0
    curtailed_now = np.zeros(n, dtype=bool)
    curtailed_now[ls[ongoing]] = True
    past = ~ongoing
    ls, la, lb = ls[past], la[past], lb[past]

    duration = budget_duration_s(budget_s.astype(np.float64), ls, la, lb, horizon_s)
    reason = skip_reasons(
        i_now_a,
        min_a,
        opt_out,
        consent_required,
        consent,
        curtailed_now,
        duration,
        min(min_duration_s, horizon_s),
    )
    release = released_kw(i_now_a, min_a, n_phases, voltage_v)
    eligible = reason == CHOSEN
    if target_kw is not None:
        used = window_used_s(n, ls, la, lb, np.zeros(n))
        counts = np.zeros(n, dtype=np.int64) if n_curtailed is None else n_curtailed
        order = fair_order(eligible, counts, budget_s - used, used, release)
        cum = np.cumsum(release[order])
        take = min(int(np.searchsorted(cum, target_kw - 1e-9)) + 1, order.size)
        reason[order[take:]] = SKIP_REASONS.index("not_needed")
    chosen = reason == CHOSEN
    return Activation(
        signal_at=at,
        restore_at=restore_at,
        reason=reason,
        duration_s=np.where(chosen, duration, 0.0),
        release_kw=np.where(chosen, release, 0.0),
        limit_a=min_a.astype(np.float64),
        target_kw=target_kw,
    )
