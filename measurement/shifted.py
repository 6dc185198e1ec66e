"""Energy shifted per demand-response activation, its value and the performance ratio
(equations in ``docs/MEASUREMENT.md``).

For an activation from ``t_s`` (signal) to ``t_c`` (clear) over the set ``S`` of sessions
charging at ``t_s`` (in the activation's region):

- delivered ``E_del = Σ_{i∈S} E_i(t_c) − E_i(t_s)``;
- ``S`` splits into the sessions that keep charging after the recovery (``S_c``) and those that
  stop (leave, are full, their profile ends) at ``τ_i`` before ``t_c + window_s`` (``S_x``,
  ``τ_i`` the first minute boundary at which ``E_i`` reaches its value at the horizon);
- ``P(t_s)``: a straight line fitted to the aggregate power of ``S_c`` in the ``window_s``
  before the signal, at ``t_s``;
- recovery ``t_r``: the end of the rising edge after ``t_c``, found on the derivative of the
  aggregate power (the first minute boundary after the steepest rise where the rise falls below
  ``edge_fraction`` of it);
- ``P(t_r)``: a line fitted to the power in the ``window_s`` after ``t_r``, at ``t_r``;
- ``P(t_c) = P(t_s) + (P(t_r) − P(t_s)) · (t_c − t_s) / (t_r − t_s)``;
- baseline ``E_base = (P(t_s) + P(t_c)) · (t_c − t_s) / 2 + Σ_{i∈S_x} p̄_i · (min(τ_i, t_c) − t_s)⁺``
  (the departures captured session by session); shifted ``E_shift = E_base − E_del``;
- value ``Σ_q E_shift,q · π_q`` over the ISPs ``q`` the activation spans (the baseline line and
  the delivered energy split at ISP boundaries), ``π_q`` the imbalance price;
- cross-check ``E_hold = Σ_{i∈S_c} p_i(t_s⁻) · (t_c − t_s) + (stopped sessions as above)``:
  every continuing session held at its power in the minute before the signal;
- theoretical minimum ``E_min = Σ_{i∈S} min(p̄_i, p_min,i) · (t_c − t_s)`` with ``p̄_i`` the
  session's power in the ``pre_s`` before the signal; performance ratio
  ``E_shift / (E_base − E_min)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from measurement.reconstruct import ISP_S, MINUTE_S, Reconstruction

WINDOW_S = 600.0
"""Length of the fits before the signal and after the recovery [s]."""
PRE_S = 300.0
"""Window before the signal that defines each session's pre-signal power [s]."""
SEARCH_S = 600.0
"""How long after ``t_clear`` the recovery edge is searched [s]."""
EDGE_FRACTION = 0.1
ACTIVE_KW = 0.05
"""Power [kW] above which a session counts as charging at the signal."""
PLOT_MARGIN_S = 1800.0


def line_at(t_s: np.ndarray, p_kw: np.ndarray, at_s: float) -> float:
    """Least-squares line through ``(t_s, p_kw)`` evaluated at ``at_s`` [kW]; the mean for
    fewer than two points, NaN for none."""
    if t_s.size == 0:
        return float("nan")
    if t_s.size == 1 or np.ptp(t_s) == 0:
        return float(np.mean(p_kw))
    _slope, icpt = np.polyfit(t_s - at_s, p_kw, 1)
    return float(icpt)


def recovery_time(edges_s: np.ndarray, p_kw: np.ndarray, t_clear_s: float) -> float:
    """End of the rising edge after ``t_clear`` [s since epoch].

    Parameters
    ----------
    edges_s : numpy.ndarray
        Minute boundaries [s]; ``p_kw`` holds the mean power between consecutive ones [kW].
    p_kw : numpy.ndarray
        Aggregate power [kW].
    t_clear_s : float
        Clear instant [s].

    Returns
    -------
    float
        The first boundary after the steepest rise in ``[t_c − 1 min, t_c + SEARCH_S]`` where
        the rise ``dP_j = P_j − P_{j−1}`` drops below ``EDGE_FRACTION`` of the steepest; ``t_c``
        when power does not rise.
    """
    d = np.diff(p_kw)  # d[j] is the change at boundary edges[j + 1]
    at = edges_s[1:-1]
    look = np.nonzero((at >= t_clear_s - MINUTE_S) & (at <= t_clear_s + SEARCH_S))[0]
    if look.size == 0:
        return t_clear_s
    j = look[np.argmax(d[look])]
    peak = d[j]
    if peak <= 0:
        return t_clear_s
    later = np.nonzero((np.arange(d.size) > j) & (d <= EDGE_FRACTION * peak))[0]
    end = later[0] if later.size else j + 1
    return float(max(at[end], t_clear_s))


def active_sessions(rec: Reconstruction, t_signal_s: float, region: str = "") -> np.ndarray:
    """Indices of the sessions charging at ``t_signal`` (power above ``ACTIVE_KW`` in the minute
    before it, a state at or before it and one after it), in ``region`` when given."""
    cand = np.nonzero((rec.first_s <= t_signal_s) & (rec.last_s > t_signal_s))[0]
    if region:
        cand = cand[rec.region[cand] == region]
    if cand.size == 0:
        return cand
    p = rec.power_kw(np.array([t_signal_s - MINUTE_S, t_signal_s]), cand)[:, 0]
    return cand[p > ACTIVE_KW]


def isp_segments(t_signal_s: float, t_clear_s: float, isp_s: int = ISP_S) -> np.ndarray:
    """Boundaries of the pieces of ``[t_s, t_c]`` cut at ISP boundaries [s]."""
    inner = np.arange(np.floor(t_signal_s / isp_s) + 1, np.ceil(t_clear_s / isp_s)) * isp_s
    return np.r_[t_signal_s, inner[(inner > t_signal_s) & (inner < t_clear_s)], t_clear_s]


def price_at(prices: pd.DataFrame | None, t_s: float, isp_s: int = ISP_S) -> float:
    """Imbalance price of the ISP holding ``t_s`` [EUR/MWh]; NaN when unknown."""
    if prices is None or prices.empty:
        return float("nan")
    start = np.floor(t_s / isp_s) * isp_s
    near = np.abs(prices["start_s"].to_numpy(float) - start) < 0.5
    hit = prices.loc[near, "price_eur_per_mwh"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


@dataclass
class ActivationResult:
    """Measured outcome of one activation (energies [kWh], powers [kW], times [s])."""

    id: str
    region: str
    t_signal_s: float
    t_clear_s: float
    t_recovery_s: float
    sessions: int
    stopped_sessions: int
    stopped_baseline_kwh: float
    p_signal_kw: float
    p_clear_kw: float
    p_recovery_kw: float
    baseline_kwh: float
    delivered_kwh: float
    shifted_kwh: float
    theoretical_min_kwh: float
    performance_ratio: float
    hold_baseline_kwh: float
    hold_shifted_kwh: float
    value_eur: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    method: str = "trapezoid"
    """Which baseline the headline figures use: ``trapezoid`` (the aggregate trapezoid) or
    ``session`` (the per-session plan baseline, :func:`plan_shifted`)."""
    trapezoid_baseline_kwh: float = float("nan")
    trapezoid_shifted_kwh: float = float("nan")
    trapezoid_value_eur: float = float("nan")
    sessions_without_plan: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record, times as ISO-8601 UTC."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "series":
                continue
            if key.endswith("_s"):
                out[key[:-2]] = iso(value)
            elif isinstance(value, float):
                out[key] = None if np.isnan(value) else round(value, 6)
            else:
                out[key] = value
        return out


def isp_piece(
    start_s: float,
    baseline_kwh: float,
    delivered_kwh: float,
    price_eur_per_mwh: float,
    prices: pd.DataFrame | None,
) -> tuple[float, dict[str, Any]]:
    """The value of one ISP piece of an activation and its report row.

    ``value = (E_base,q − E_del,q) · π_q / 1000`` [EUR], with ``π_q`` the activation's price
    or, when it has none (NaN), the imbalance price of the ISP holding ``start_s`` [EUR/MWh]
    (NaN when unknown, which makes the value NaN).
    """
    price = price_eur_per_mwh
    if not np.isfinite(price):
        price = price_at(prices, start_s)
    shifted_kwh = baseline_kwh - delivered_kwh
    segment = {
        "isp_start": iso(np.floor(start_s / ISP_S) * ISP_S),
        "baseline_kwh": round(baseline_kwh, 6),
        "delivered_kwh": round(delivered_kwh, 6),
        "shifted_kwh": round(shifted_kwh, 6),
        "price_eur_per_mwh": None if not np.isfinite(price) else price,
    }
    return shifted_kwh * price / 1000.0, segment


def iso(t_s: float) -> str:
    """UTC ISO-8601 with ``Z``."""
    t = round(float(t_s), 3)
    spec = "seconds" if t == int(t) else "milliseconds"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def measure_activation(
    rec: Reconstruction,
    activation_id: str,
    t_signal_s: float,
    t_clear_s: float,
    region: str = "",
    price_eur_per_mwh: float = float("nan"),
    prices: pd.DataFrame | None = None,
    split_stopped: bool = True,
    sessions: np.ndarray | None = None,
) -> ActivationResult:
    """Shifted energy, baseline, theoretical minimum and value of one activation.

    Parameters
    ----------
    rec : Reconstruction
        The reconstructed sessions.
    activation_id : str
    t_signal_s, t_clear_s : float
        Signal and clear instants [s since epoch].
    region : str
        Region the signal went to ('' = every session).
    price_eur_per_mwh : float
        Imbalance price for the whole activation [EUR/MWh]; NaN to take each ISP's price from
        ``prices``.
    prices : pandas.DataFrame, optional
        From :func:`measurement.io.load_prices`.
    split_stopped : bool
        Take the sessions that stop charging before the horizon out of the trapezoid and
        count each at its pre-signal power until it stops (``S_x``); ``False`` gives the plain
        aggregate trapezoid over all of ``S``.
    sessions : numpy.ndarray, optional
        Indices into ``rec`` of the sessions the activation curtailed (the activation log);
        ``S`` is then those of them charging at ``t_signal``. Default: every session charging
        in ``region``.
    """
    idx = active_sessions(rec, t_signal_s, region)
    if sessions is not None:
        idx = idx[np.isin(idx, sessions)]
    lo = t_signal_s - PLOT_MARGIN_S
    n_after = int(np.ceil((t_clear_s + PLOT_MARGIN_S - t_signal_s) / MINUTE_S))
    edges = t_signal_s + MINUTE_S * np.arange(-int(PLOT_MARGIN_S // MINUTE_S), n_after + 1)
    edges = edges[edges >= lo]
    mid = (edges[:-1] + edges[1:]) / 2.0
    dur_h = (t_clear_s - t_signal_s) / 3600.0
    stop_kwh = np.zeros(0)
    stop_s = np.zeros(0)
    hold_kwh = 0.0
    if idx.size == 0:
        p = np.zeros(mid.size)
        p_cont = p
        ptheo = p
        pre_p = np.zeros(0)
    else:
        per = rec.power_kw(edges, idx)
        p = per.sum(axis=0)
        pre_p = rec.power_kw(np.array([t_signal_s - PRE_S, t_signal_s]), idx)[:, 0]
        ptheo = np.minimum(per, rec.min_power_kw[idx, None]).sum(axis=0)
        # sessions that stop charging (leave, are full, profile ends) before t_c + WINDOW_S
        horizon = edges[edges <= t_clear_s + WINDOW_S + 1e-6]
        e_h = rec.energy_kwh(horizon, idx)
        done = e_h >= e_h[:, -1:] - 1e-6
        tau = horizon[np.argmax(done, axis=1)]
        stopped = (tau < horizon[-1] - MINUTE_S) & split_stopped
        stop_s = tau[stopped]
        stop_kw = pre_p[stopped]
        stop_kwh = stop_kw * np.clip(np.minimum(stop_s, t_clear_s) - t_signal_s, 0, None) / 3600
        p_cont = per[~stopped].sum(axis=0)
        last_min = rec.power_kw(np.array([t_signal_s - MINUTE_S, t_signal_s]), idx)[:, 0]
        hold_kwh = float(last_min[~stopped].sum()) * dur_h + float(stop_kwh.sum())

    before = (edges[1:] <= t_signal_s) & (edges[:-1] >= t_signal_s - WINDOW_S)
    p_sig = line_at(mid[before], p_cont[before], t_signal_s) if idx.size else 0.0
    if not np.isfinite(p_sig):
        p_sig = 0.0
    t_rec = recovery_time(edges, p_cont, t_clear_s)
    after = (edges[:-1] >= t_rec) & (edges[1:] <= t_rec + WINDOW_S)
    p_rec = line_at(mid[after], p_cont[after], t_rec) if idx.size else 0.0
    if not np.isfinite(p_rec):
        p_rec = p_sig
    frac = (t_clear_s - t_signal_s) / (t_rec - t_signal_s)
    p_clr = p_sig + (p_rec - p_sig) * frac

    cuts = isp_segments(t_signal_s, t_clear_s)
    e_at = rec.total_energy_kwh(cuts, idx) if idx.size else np.zeros(cuts.size)
    line = p_sig + (p_clr - p_sig) * (cuts - t_signal_s) / (t_clear_s - t_signal_s)
    stop_kw_all = pre_p[stopped] if idx.size else np.zeros(0)
    segments = []
    value = 0.0
    for a in range(cuts.size - 1):
        base = (line[a] + line[a + 1]) / 2.0 * (cuts[a + 1] - cuts[a]) / 3600.0
        held = np.clip(np.minimum(stop_s, cuts[a + 1]) - cuts[a], 0, None)
        base += float((stop_kw_all * held).sum()) / 3600.0
        dlv = float(e_at[a + 1] - e_at[a])
        piece_eur, segment = isp_piece(cuts[a], base, dlv, price_eur_per_mwh, prices)
        value += piece_eur
        segments.append(segment)
    baseline = (p_sig + p_clr) / 2.0 * dur_h + float(stop_kwh.sum())
    delivered = float(e_at[-1] - e_at[0])
    shifted = baseline - delivered
    e_min = float(np.minimum(pre_p, rec.min_power_kw[idx]).sum() * dur_h) if idx.size else 0.0
    room = baseline - e_min
    ratio = shifted / room if room > 1e-9 else float("nan")
    return ActivationResult(
        id=activation_id,
        region=region,
        t_signal_s=t_signal_s,
        t_clear_s=t_clear_s,
        t_recovery_s=t_rec,
        sessions=int(idx.size),
        stopped_sessions=int(stop_s.size),
        stopped_baseline_kwh=float(stop_kwh.sum()),
        p_signal_kw=p_sig,
        p_clear_kw=p_clr,
        p_recovery_kw=p_rec,
        baseline_kwh=baseline,
        delivered_kwh=delivered,
        shifted_kwh=shifted,
        theoretical_min_kwh=e_min,
        performance_ratio=ratio,
        hold_baseline_kwh=hold_kwh,
        hold_shifted_kwh=hold_kwh - delivered,
        value_eur=value,
        segments=segments,
        series={"edges_s": edges, "p_kw": p, "p_cont_kw": p_cont, "p_min_kw": ptheo},
        trapezoid_baseline_kwh=baseline,
        trapezoid_shifted_kwh=shifted,
        trapezoid_value_eur=value,
    )


def with_session_baseline(res: ActivationResult, est: PlanEstimate) -> ActivationResult:
    """``res`` with the per-session baseline ``est`` as its headline: ``baseline_kwh``,
    ``shifted_kwh``, ``value_eur``, ``segments`` and ``performance_ratio =
    E_shift / (E_base − E_min)`` from ``est``; the trapezoid stays in ``trapezoid_*``."""
    room = est.baseline_kwh - res.theoretical_min_kwh
    series = dict(res.series)
    series.update(est.series)
    return replace(
        res,
        method="session",
        baseline_kwh=est.baseline_kwh,
        delivered_kwh=est.delivered_kwh,
        shifted_kwh=est.shifted_kwh,
        value_eur=est.value_eur,
        segments=est.segments,
        performance_ratio=est.shifted_kwh / room if room > 1e-9 else float("nan"),
        sessions_without_plan=est.without_plan,
        series=series,
    )


def measure_activations(
    rec: Reconstruction,
    activations: pd.DataFrame,
    prices: pd.DataFrame | None = None,
    split_stopped: bool = True,
    plan: Plan | None = None,
    cars: CarModel | None = None,
) -> list[ActivationResult]:
    """:func:`measure_activation` for each row of :func:`measurement.io.load_activations`;
    with a ``plan`` (the published profiles) the per-session plan baseline
    (:func:`plan_shifted` with ``cars``) is the headline, the trapezoid kept in
    ``trapezoid_*``."""
    out = []
    for a in activations.itertuples(index=False):
        res = measure_activation(
            rec,
            str(a.id),
            float(a.t_signal_s),
            float(a.t_clear_s),
            str(a.region),
            float(a.price_eur_per_mwh),
            prices,
            split_stopped,
        )
        if plan is not None:
            est = plan_shifted(
                rec,
                float(a.t_signal_s),
                float(a.t_clear_s),
                plan,
                str(a.region),
                cars=cars,
                price_eur_per_mwh=float(a.price_eur_per_mwh),
                prices=prices,
            )
            if est.without_plan < est.sessions:  # some session had a profile
                res = with_session_baseline(res, est)
        out.append(res)
    return out


@dataclass(frozen=True)
class Plan:
    """The charging plan in force at a signal: per session, the profile limits [A] on a common
    grid of intervals ``[edges_s[j], edges_s[j+1])`` [s since epoch] (the published profiles
    the service knows; NaN or 0 where a session has no limit to charge at)."""

    session_ids: np.ndarray
    edges_s: np.ndarray
    limits_a: np.ndarray

    def limit_at(self, session_ids: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """The plan's limit of each ``session_ids[k]`` at ``t_s[k]`` [A]; NaN where the session
        has no plan or ``t_s`` is outside the plan's grid."""
        row_of = {str(s): k for k, s in enumerate(self.session_ids)}
        rows = np.array([row_of.get(str(s), -1) for s in session_ids], dtype=int)
        table = self.limits_a.reshape(-1, self.edges_s.size - 1)
        j = np.searchsorted(self.edges_s, np.asarray(t_s, float), side="right") - 1
        ok = (rows >= 0) & (j >= 0) & (j < table.shape[1])
        out = np.full(rows.size, np.nan)
        if table.size:
            out[ok] = table[rows[ok], j[ok]]
        return out


@dataclass(frozen=True)
class CarModel:
    """What each car takes, estimated from its own states (arrays per session of the
    reconstruction, see :func:`estimate_cars`).

    Attributes
    ----------
    i_max_a : numpy.ndarray
        Highest phase current the session drew outside curtailments [A] (0 when none).
    known : numpy.ndarray
        True when that highest current was drawn while the profile allowed more: it is the
        car's own maximum; otherwise it is only a lower bound.
    fleet_ratio : float
        Median share of the profile limit the cars with a known maximum drew at it [-]
        (NaN when no car was seen below its limit).
    typical_a : numpy.ndarray
        Per session, the median known maximum of the cars charging on as many phases [A]
        (NaN when there is none).
    need_kwh : numpy.ndarray
        Energy need stated in the charging preferences [kWh] (NaN when not given).
    taper_kwh : float
        Remaining need over which cars lower their current at the end of the charge [kWh]
        (0 when no taper was seen).
    taper_floor : float
        Lowest share of its maximum a tapering car draws [-].
    """

    i_max_a: np.ndarray
    known: np.ndarray
    fleet_ratio: float
    need_kwh: np.ndarray
    taper_kwh: float
    taper_floor: float
    typical_a: np.ndarray | None = None

    def current_a(self, sessions: np.ndarray, limit_a: np.ndarray) -> np.ndarray:
        """What each car of ``sessions`` would take under ``limit_a`` (sessions × times) before
        any taper [A]: ``I_max,i`` when known, else ``max(I_max,i, r · L, Ī_φ)``."""
        i_max = self.i_max_a[sessions][:, None]
        r = self.fleet_ratio if np.isfinite(self.fleet_ratio) else 1.0
        guess = np.maximum(i_max, r * limit_a)
        if self.typical_a is not None:
            guess = np.maximum(guess, np.nan_to_num(self.typical_a[sessions])[:, None])
        return np.where(self.known[sessions][:, None], i_max, guess)


SEEN_MARGIN_A = 0.5
"""A free state within this of the session's highest current shows the car's maximum [A]."""
CURTAIL_GRACE_S = 60.0
"""States up to this long after a clear are still treated as curtailed [s]."""
TAPER_BELOW = 0.95
"""A car below this share of its maximum while its profile allows more is tapering [-]."""
MIN_TAPER_STATES = 20
"""Fewest tapering states from which a fleet taper is learned [-]."""
FULL_STATES = 2
"""States at the final energy without current while the profile allowed some that show the
car ended full [-]."""


def plan_energy(
    plan: Plan, rec: Reconstruction, voltage_v: float = 230.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per session of ``rec``: the energy its whole plan gives, ``Σ_j L_j · phases · V · Δt_j``
    [kWh], and the end of its last interval with a limit above 0.5 A [s] (NaN without a
    plan, or when the limit is still above 0.5 A at the end of the plan's grid)."""
    n = rec.n_sessions
    energy, ends = np.full(n, np.nan), np.full(n, np.nan)
    row_of = {str(s): k for k, s in enumerate(plan.session_ids)}
    rows = np.array([row_of.get(str(s), -1) for s in rec.session_ids], dtype=int)
    have = rows >= 0
    if not have.any():
        return energy, ends
    table = np.nan_to_num(plan.limits_a.reshape(-1, plan.edges_s.size - 1)[rows[have]])
    dt_h = np.diff(plan.edges_s) / 3600.0
    kw_per_a = rec.phases[have] * voltage_v / 1000.0
    energy[have] = (table * dt_h[None, :]).sum(axis=1) * kw_per_a
    pos = table > 0.5
    last = np.where(pos.any(axis=1), pos.shape[1] - 1 - np.argmax(pos[:, ::-1], axis=1), -1)
    # a plan whose limit is still positive at the end of its grid has not ended (no need read)
    ended = (last >= 0) & (last + 1 < table.shape[1])
    ends[have] = np.where(ended, plan.edges_s[np.clip(last + 1, 0, None)], np.nan)
    return energy, ends


def estimate_cars(
    states: pd.DataFrame,
    rec: Reconstruction,
    activations: pd.DataFrame | None = None,
    plan: Plan | None = None,
    voltage_v: float = 230.0,
) -> CarModel:
    """Each car's own maximum current, the fleet ratio, the stated needs and the fleet's
    end-of-charge taper, all from the states themselves.

    With ``I_k = max_phase I`` the current of state ``k`` [A], ``L_k`` the profile limit in
    force (``profile_a``; where not given, the plan's limit) and the states inside a curtailment
    (``[t_s, t_c + 60 s)`` of an activation in the session's region) left out:

    - ``I_max,i = max_k I_k`` over the session's charging states (``I_k > 0.5 A``);
    - the state is *free* when ``I_k < 0.98 · L_k`` (the car, not the profile, limits it);
      ``I_max,i`` is *known* when a free state has ``I_k ≥ I_max,i − 0.5 A``;
    - fleet ratio ``r = median_i I_k / L_k`` over the known sessions, at their highest free
      state; the typical car ``Ī_φ = median I_max,i`` over the known sessions on ``φ`` phases;
    - the need ``N_i``: the final energy of a car seen full (two states at its final energy
      without current while its profile allowed some), else the stated ``energy_need_kwh``,
      else the energy of its whole plan when the plan ends at least 15 minutes before the
      session leaves (made to meet it);
    - taper: over the free states of known sessions with a need ``N_i``, the remaining
      need ``R_k = N_i − E_k`` and the share ``ρ_k = I_k / I_max,i``; the states with
      ``ρ_k < 0.95`` and ``R_k > 0`` are tapering. ``floor = q_5%(ρ_k)`` and
      ``T = median(R_k / ρ_k)`` over those with ``ρ_k > floor + 0.05`` (the linear taper
      ``ρ = R / T``). With fewer than 20 tapering states ``T = 0`` (no taper).

    Parameters
    ----------
    states : pandas.DataFrame
        From :func:`measurement.io.load_states` (``energy_need_kwh`` optional).
    rec : Reconstruction
        The reconstruction of ``states``.
    activations : pandas.DataFrame, optional
        From :func:`measurement.io.load_activations`.
    plan : Plan, optional
        The published profiles, for states without ``profile_a``.
    """
    n = rec.n_sessions
    pos = {str(s): k for k, s in enumerate(rec.session_ids)}
    sid = states["session_id"].to_numpy().astype(str)
    k_of = np.array([pos.get(s, -1) for s in sid], dtype=int)
    t = states["t_s"].to_numpy(float)
    i_a = states[["i_l1_a", "i_l2_a", "i_l3_a"]].to_numpy(float).max(axis=1)
    lim = states["profile_a"].to_numpy(float).copy()
    if plan is not None:
        miss = np.isnan(lim)
        lim[miss] = plan.limit_at(sid[miss], t[miss])
    curtailed = np.zeros(t.size, dtype=bool)
    if activations is not None:
        region = states["region"].to_numpy().astype(str)
        for a in activations.itertuples(index=False):
            inside = (t >= a.t_signal_s) & (t < a.t_clear_s + CURTAIL_GRACE_S)
            if str(a.region):
                inside &= region == str(a.region)
            curtailed |= inside
    ok = (k_of >= 0) & (i_a > 0.5) & ~curtailed
    i_max = np.zeros(n)
    np.maximum.at(i_max, k_of[ok], i_a[ok])
    free = ok & np.isfinite(lim) & (i_a < CAR_LIMITED * np.nan_to_num(lim, nan=0.0))
    top = free & (i_a >= i_max[np.maximum(k_of, 0)] - SEEN_MARGIN_A)
    known = np.zeros(n, dtype=bool)
    known[k_of[top]] = True
    share = np.zeros(n)
    np.maximum.at(share, k_of[top], i_a[top] / lim[top])
    ratio = float(np.median(share[known])) if known.any() else float("nan")
    typical = np.full(n, np.nan)
    for ph in np.unique(rec.phases):
        same = rec.phases == ph
        if (same & known).any():
            typical[same] = float(np.median(i_max[same & known]))

    # the need: a car that stopped drawing while its profile allowed current was full, and its
    # final energy is its need; otherwise the need stated in the charging preferences
    e_k = states["e_kwh"].to_numpy(float)
    valid = k_of >= 0
    e_last = np.zeros(n)
    np.maximum.at(e_last, k_of[valid], e_k[valid])
    kk = np.maximum(k_of, 0)
    idle = (
        valid
        & ~curtailed
        & (e_k >= e_last[kk] - 1e-3)
        & (i_a < 0.5)
        & (np.nan_to_num(lim, nan=0.0) > 0.5)
        & (e_last[kk] > 0)
    )
    full = np.bincount(k_of[idle], minlength=n) >= FULL_STATES
    need = np.full(n, np.nan)
    if "energy_need_kwh" in states.columns:
        given = valid & np.isfinite(states["energy_need_kwh"].to_numpy(float))
        need[k_of[given]] = states["energy_need_kwh"].to_numpy(float)[given]
    need[full] = e_last[full]
    if plan is not None:
        # otherwise the plan's energy, when the plan ends well before the session leaves (it
        # was made to meet the need)
        planned, ends = plan_energy(plan, rec, voltage_v)
        met = np.isnan(need) & np.isfinite(ends) & (ends <= rec.last_s - PLAN_MET_S)
        need[met] = planned[met]
    taper_kwh, floor = 0.0, 1.0
    use = free & known[kk] & np.isfinite(need[kk]) & (i_max[kk] > 0.5)
    rem = need[kk] - e_k
    rho = np.where(use, i_a / np.where(i_max[kk] > 0, i_max[kk], 1.0), 1.0)
    tapering = use & (rho < TAPER_BELOW) & (rem > 0)
    if tapering.sum() >= MIN_TAPER_STATES:
        floor = float(np.quantile(rho[tapering], 0.05))
        mid = tapering & (rho > floor + 0.05)
        if mid.sum() >= MIN_TAPER_STATES // 2:
            taper_kwh = float(np.median(rem[mid] / rho[mid]))
    return CarModel(i_max, known, ratio, need, taper_kwh, min(floor, 1.0), typical)


@dataclass(frozen=True)
class PlanEstimate:
    """Shifted energy of one activation against the per-session plan baseline [kWh], and its
    value [EUR] with the per-ISP pieces."""

    baseline_kwh: float
    delivered_kwh: float
    shifted_kwh: float
    sessions: int
    without_plan: int
    value_eur: float = float("nan")
    segments: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """``base_edges_s`` [s] and ``p_base_kw``, the summed baseline power between them [kW]."""


CAR_LIMITED = 0.98
"""A session drawing less than this share of its profile is limited by the car, not the
profile [-]."""
EXCEEDS = 1.1
"""A session drawing more than this share of its profile before the signal ignores it [-]."""
FULL_FLAT_S = 240.0
"""A session whose energy did not rise over this time before its last state ended full [s]."""
PLAN_MET_S = 900.0
"""A plan that ends this long before the session leaves was made to meet its need [s]."""


def plan_shifted(
    rec: Reconstruction,
    t_signal_s: float,
    t_clear_s: float,
    plan: Plan,
    region: str = "",
    sessions: np.ndarray | None = None,
    voltage_v: float = 230.0,
    taper_kwh: float = 0.0,
    taper_floor: float = 0.3,
    cars: CarModel | None = None,
    price_eur_per_mwh: float = float("nan"),
    prices: pd.DataFrame | None = None,
) -> PlanEstimate:
    """Shifted energy with a per-session baseline from the plan in force at the signal.

    For each session ``i`` of ``S`` (as in :func:`measure_activation`), with ``L_i(t)`` its plan
    [A], ``P_L,i(t) = L_i(t) · phases_i · V / 1000`` [kW], ``p̄_i`` its mean power over the
    5 minutes before ``t_s`` (from its plug-in if later; a session plugged in less than a minute
    before the signal follows its plan) and ``P̄_L,i`` the plan's mean over the same minutes:

    - what the car takes, without ``cars``: ``c_i = p̄_i`` when ``p̄_i < 0.98 · P̄_L,i`` (the
      car, not the profile, limits it), else ``∞``; ``p_i^cf(t) = min(P_L,i(t), c_i)``.
      With ``cars`` (:func:`estimate_cars`, the car's own history):
      ``I_i^cf(t) = min(L_i(t), I_max,i)`` when ``I_max,i`` is known, else
      ``min(L_i(t), max(I_max,i, r · L_i(t), Ī_φ))``; ``p_i^cf = I_i^cf · phases_i · V / 1000``;
    - a session drawing more than ``1.1 · P̄_L,i`` + 1 A on its phases ignores its profile:
      ``p_i^cf(t) = p̄_i``; so is a session without a plan (counted in ``without_plan``);
    - ``τ_i``: the session's energy stops rising before ``t_c + 10 min`` as in the trapezoid.
      If ``τ_i`` is its last state (sent at departure), it left: ``p_i^cf = 0`` after
      ``τ_i``. If it stopped earlier while its plan still gave it current, it was full:
      ``E_i^cf ≤ E_i(t_c + 10 min) − E_i(t_s)``. If its plan paused it, the plan says so;
    - remaining need ``R_i``: with ``cars`` and a stated need ``N_i``, ``N_i − E_i(t_s)``;
      otherwise (with ``taper_kwh > 0`` or ``cars``) the plan's energy from ``t_s`` on,
      ``∫ min(P_L,i, c_i) dt``, when the plan ends at least 15 minutes before the session leaves
      (it was made to meet the need); else unknown (``∞``);
    - end-of-charge taper ``T`` (``cars.taper_kwh`` when ``cars`` is given, else ``taper_kwh``)
      with ``g_i(t) = clip((R_i − E_i^cf(t)) / T, floor, 1)``, minute by minute: with ``cars``
      the car's own maximum tapers, ``I_i^cf(t) = min(L_i(t), g_i(t) · I_car,i(t))``
      (``I_car,i`` the car's maximum above); without, ``p_i^cf`` is scaled by ``g_i`` and
      ``c_i`` divided by ``g_i(t_s)`` (a car already tapering drew less than its own maximum).
      Either way the session stops at ``R_i``;
    - ``E_i^cf = ∫_{t_s}^{t_c} p_i^cf dt``; ``E_base = Σ_i E_i^cf``,
      ``E_del = Σ_i E_i(t_c) − E_i(t_s)``, shifted = base − delivered;
    - value: the window is cut at ISP boundaries; ``value = Σ_q (E_base,q − E_del,q) · π_q /
      1000`` [EUR] with ``π_q`` the activation's price or, without one, the ISP's from
      ``prices`` [EUR/MWh].
    """
    idx = active_sessions(rec, t_signal_s, region)
    if sessions is not None:
        idx = idx[np.isin(idx, sessions)]
    if idx.size == 0:
        return PlanEstimate(
            0.0,
            0.0,
            0.0,
            0,
            0,
            *_plan_value(
                np.zeros((0, 1)),
                np.array([t_signal_s, t_clear_s]),
                np.zeros((0, 2)),
                price_eur_per_mwh,
                prices,
            ),
        )
    row_of = {str(s): k for k, s in enumerate(plan.session_ids)}
    rows = np.array([row_of.get(str(s), -1) for s in rec.session_ids[idx]], dtype=int)
    n_min = int(np.ceil((t_clear_s - t_signal_s) / MINUTE_S - 1e-9))
    minute_edges = np.minimum(t_signal_s + MINUTE_S * np.arange(n_min + 1), t_clear_s)
    edges = np.unique(np.r_[minute_edges, isp_segments(t_signal_s, t_clear_s)])
    mid = (edges[:-1] + edges[1:]) / 2.0
    width_h = np.diff(edges) / 3600.0
    pre_mid = t_signal_s - PRE_S + MINUTE_S * (np.arange(int(PRE_S // MINUTE_S)) + 0.5)
    phases = rec.phases[idx].astype(float)
    kw_per_a = phases * voltage_v / 1000.0

    # a row of zeros stands in for sessions without a plan (they are held, see below)
    n_cols = plan.edges_s.size - 1
    table = np.vstack([plan.limits_a.reshape(-1, n_cols), np.zeros((1, n_cols))])
    rows = np.where(rows < 0, table.shape[0] - 1, rows)
    no_plan = rows == table.shape[0] - 1

    def limits_a(t: np.ndarray) -> np.ndarray:
        j = np.searchsorted(plan.edges_s, t, side="right") - 1
        ok = (j >= 0) & (j < n_cols)
        lim = table[rows[:, None], np.clip(j, 0, n_cols - 1)]
        return np.where(ok[None, :], np.nan_to_num(lim), 0.0)

    l_a = limits_a(mid)
    p_l = l_a * kw_per_a[:, None]
    # the pre-signal window of each session starts at its plug-in at the earliest
    a_s = np.maximum(t_signal_s - PRE_S, rec.first_s[idx])
    seen_s = t_signal_s - a_s
    in_pre = pre_mid[None, :] >= a_s[:, None]
    p_l_pre = (limits_a(pre_mid) * kw_per_a[:, None] * in_pre).sum(axis=1) / np.maximum(
        in_pre.sum(axis=1), 1
    )
    e_pre = np.diagonal(rec.energy_kwh(a_s, idx)).copy()
    e_sig = rec.energy_kwh(np.array([t_signal_s]), idx)[:, 0]
    p_bar = np.where(seen_s > 0, (e_sig - e_pre) * 3600.0 / np.maximum(seen_s, 1e-9), 0.0)
    judged = seen_s >= MINUTE_S  # too short a history: follow the plan
    if cars is None:
        cap = np.where(judged & (p_bar < CAR_LIMITED * p_l_pre), p_bar, np.inf)
        p_cf = np.minimum(p_l, cap[:, None])
        t_kwh, t_floor = taper_kwh, taper_floor
    else:
        p_car = cars.current_a(idx, l_a) * kw_per_a[:, None]
        p_cf = np.minimum(p_l, p_car)
        cap = np.full(idx.size, np.inf)  # the car's maximum is already in p_cf
        t_kwh, t_floor = cars.taper_kwh, cars.taper_floor
    exceeds = judged & (p_bar > EXCEEDS * p_l_pre + kw_per_a)  # 1 A on each phase
    hold = exceeds | no_plan
    p_cf[hold] = p_bar[hold, None]
    # sessions whose energy stops rising before the horizon: those that left (their last state,
    # sent at departure) charge nothing after it; those that stopped while the plan still gave
    # them current were full and could not have taken more than they took in the end; those
    # the plan paused follow the plan
    horizon = t_signal_s + MINUTE_S * np.arange(int((t_clear_s + WINDOW_S - t_signal_s) // 60) + 1)
    e_h = rec.energy_kwh(horizon, idx)
    done = e_h >= e_h[:, -1:] - 1e-6
    tau = horizon[np.argmax(done, axis=1)]
    stopped = tau < horizon[-1] - MINUTE_S
    left = stopped & (tau >= rec.last_s[idx] - FULL_FLAT_S)
    gone = left[:, None] & (mid[None, :] >= tau[:, None])
    j_tau = np.clip(np.searchsorted(plan.edges_s, tau + 30.0, side="right") - 1, 0, n_cols - 1)
    lim_tau = np.nan_to_num(table[rows, j_tau])
    full = stopped & ~left & (lim_tau > 0.5) & ~no_plan
    e_end = rec.energy_kwh(np.array([horizon[-1]]), idx)[:, 0]
    room = np.where(full, e_end - e_sig, np.inf)

    need = np.full(idx.size, np.inf)
    if t_kwh > 0 or cars is not None:
        # the plan's energy from t_s on, when the plan ends well before the session leaves
        j0 = int(np.searchsorted(plan.edges_s, t_signal_s, side="right") - 1)
        seg_lo = np.maximum(plan.edges_s[:-1], t_signal_s)
        dur_h = np.clip(plan.edges_s[1:] - seg_lo, 0, None) / 3600.0
        dur_h[: max(j0, 0)] = 0.0
        lim_all = np.nan_to_num(table[rows])
        kw_all = lim_all * kw_per_a[:, None]
        if cars is not None:
            kw_all = np.minimum(lim_all, cars.current_a(idx, lim_all)) * kw_per_a[:, None]
        by_plan = (np.minimum(kw_all, cap[:, None]) * dur_h[None, :]).sum(axis=1)
        pos_lim = lim_all > 0.5
        last_j = np.where(
            pos_lim.any(axis=1), pos_lim.shape[1] - 1 - np.argmax(pos_lim[:, ::-1], axis=1), -1
        )
        plan_end = plan.edges_s[np.clip(last_j + 1, 0, plan.edges_s.size - 1)]
        # the plan must end inside its grid: one still giving current at its end says nothing
        met = (last_j >= 0) & (last_j + 1 < n_cols) & (plan_end <= rec.last_s[idx] - PLAN_MET_S)
        need = np.where(met, by_plan, np.inf)
        if cars is not None:
            stated = cars.need_kwh[idx]
            need = np.where(np.isfinite(stated), np.maximum(stated - e_sig, 0.0), need)
        need = np.where(hold, np.inf, need)
    if t_kwh > 0 and cars is None:
        # a car already tapering at the signal drew less than its own maximum: undo that
        shape0 = np.where(np.isfinite(need), np.clip(need / t_kwh, t_floor, 1.0), 1.0)
        p_cf = np.where(hold[:, None], p_cf, np.minimum(p_l, (cap / shape0)[:, None]))
    p_cf[gone] = 0.0
    e_int = np.zeros_like(p_cf)
    e_cf = np.zeros(idx.size)
    for m in range(mid.size):
        rem = need - e_cf
        shape: Any = 1.0
        if t_kwh > 0:
            shape = np.where(np.isfinite(rem), np.clip(rem / t_kwh, t_floor, 1.0), 1.0)
        if cars is None:
            p_m = p_cf[:, m] * shape
        else:  # the car's own maximum tapers; the plan's limit does not
            p_m = np.where(
                hold | gone[:, m], p_cf[:, m], np.minimum(p_l[:, m], p_car[:, m] * shape)
            )
        e_int[:, m] = np.minimum(p_m * width_h[m], np.maximum(rem, 0.0))
        e_cf += e_int[:, m]
    # a full car takes no more than it took by the horizon
    capped = np.minimum(np.cumsum(e_int, axis=1), room[:, None])
    e_int = np.diff(np.concatenate([np.zeros((idx.size, 1)), capped], axis=1), axis=1)
    e_at = rec.energy_kwh(edges, idx)
    value, segments = _plan_value(e_int, edges, e_at, price_eur_per_mwh, prices)
    baseline = float(e_int.sum())
    delivered = float((e_at[:, -1] - e_at[:, 0]).sum())
    return PlanEstimate(
        baseline_kwh=baseline,
        delivered_kwh=delivered,
        shifted_kwh=baseline - delivered,
        sessions=int(idx.size),
        without_plan=int(no_plan.sum()),
        value_eur=value,
        segments=segments,
        series={"base_edges_s": edges, "p_base_kw": e_int.sum(axis=0) / width_h},
    )


def _plan_value(
    e_int: np.ndarray,
    edges: np.ndarray,
    e_at: np.ndarray,
    price_eur_per_mwh: float,
    prices: pd.DataFrame | None,
) -> tuple[float, list[dict[str, Any]]]:
    """Value [EUR] and per-ISP pieces of a per-session baseline: ``e_int`` the counterfactual
    energy per session and interval between ``edges`` [kWh], ``e_at`` the reconstructed energy
    at ``edges`` [kWh]."""
    cuts = isp_segments(float(edges[0]), float(edges[-1]))
    value = 0.0
    segments = []
    for a in range(cuts.size - 1):
        inside = (edges[:-1] >= cuts[a] - 1e-6) & (edges[1:] <= cuts[a + 1] + 1e-6)
        base = float(e_int[:, inside].sum())
        ja = int(np.argmin(np.abs(edges - cuts[a])))
        jb = int(np.argmin(np.abs(edges - cuts[a + 1])))
        dlv = float((e_at[:, jb] - e_at[:, ja]).sum()) if e_at.size else 0.0
        piece_eur, segment = isp_piece(cuts[a], base, dlv, price_eur_per_mwh, prices)
        value += piece_eur
        segments.append(segment)
    return value, segments
