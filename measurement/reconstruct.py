"""Per-session energy and power from 5-minute meter states, their aggregation, and the
comparison with station smart meters (equations in ``docs/MEASUREMENT.md``).

A session's cumulative energy ``E_i(t)`` is rebuilt as a monotone piecewise-linear function
through its states ``(t_k, E_k)``. Between two states the power is piecewise constant and
*shaped by the reported currents*: it starts at ``p_k`` (from the currents of state ``k``) and
ends at ``p_{k+1}``, and the energy of the interval is exactly ``E_{k+1} − E_k``:

- **dip** (the interval holds two or more known control instants ``b``, e.g. an activation's
  ``t_signal`` and ``t_clear``): ``p_k`` until the first, a level ``x`` between the first and
  the last, ``p_{k+1}`` after; ``x`` follows from the energy;
- **step** (otherwise, when the energy lies between ``p_k·Δ`` and ``p_{k+1}·Δ``): ``p_k`` until
  ``τ``, ``p_{k+1}`` after, with ``τ`` from the energy;
- **constant** (otherwise): ``(E_{k+1} − E_k) / Δ`` throughout.

Before its first state a session's energy is its first value, after its last state its last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

ISP_S = 900
"""Imbalance settlement period [s]."""
MINUTE_S = 60
_CHUNK = 2_000


@dataclass(frozen=True)
class Reconstruction:
    """Reconstructed cumulative energy of every session.

    Attributes
    ----------
    session_ids, station, subcluster, region : numpy.ndarray
        Per session (object arrays).
    opt_out : numpy.ndarray
        True for a session whose driver opted out of smart charging (never curtailed).
    phases : numpy.ndarray
        Phases each session draws on [-].
    min_power_kw : numpy.ndarray
        Power at the station's minimum current on the session's phases [kW].
    first_s, last_s : numpy.ndarray
        Time of the first and last state [s since epoch].
    knot_t_s, knot_e_kwh : numpy.ndarray
        Knots of all sessions, session ``k`` shifted by ``k·span_s`` so one ``np.interp`` serves
        all; guarded by a flat knot half a span either side.
    origin_s, span_s : float
        Time origin [s] and the shift between sessions [s].
    models : dict
        How many intervals used each model (``dip``, ``step``, ``constant``).
    """

    session_ids: np.ndarray
    opt_out: np.ndarray
    station: np.ndarray
    subcluster: np.ndarray
    region: np.ndarray
    phases: np.ndarray
    min_power_kw: np.ndarray
    first_s: np.ndarray
    last_s: np.ndarray
    knot_t_s: np.ndarray
    knot_e_kwh: np.ndarray
    origin_s: float
    span_s: float
    models: dict[str, int]

    @property
    def n_sessions(self) -> int:
        return int(self.session_ids.size)

    def index(self, **match: str) -> np.ndarray:
        """Indices of the sessions whose ``station``/``subcluster``/``region`` equal the given."""
        keep = np.ones(self.n_sessions, dtype=bool)
        for key, value in match.items():
            keep &= getattr(self, key) == value
        return np.nonzero(keep)[0]

    def energy_kwh(self, t_s: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
        """Cumulative energy ``E_i(t)`` [kWh], ``len(sessions) × len(t_s)``.

        Parameters
        ----------
        t_s : numpy.ndarray
            Instants [s since epoch].
        sessions : numpy.ndarray, optional
            Session indices (default all).
        """
        idx = np.arange(self.n_sessions) if sessions is None else np.asarray(sessions, int)
        t = np.clip(np.asarray(t_s, float) - self.origin_s, -0.4 * self.span_s, 0.4 * self.span_s)
        q = t[None, :] + idx[:, None] * self.span_s
        return np.interp(q.ravel(), self.knot_t_s, self.knot_e_kwh).reshape(q.shape)

    def total_energy_kwh(self, t_s: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
        """``Σ_i E_i(t)`` [kWh] over the given sessions, computed in chunks."""
        idx = np.arange(self.n_sessions) if sessions is None else np.asarray(sessions, int)
        out = np.zeros(len(t_s))
        for k in range(0, idx.size, _CHUNK):
            out += self.energy_kwh(t_s, idx[k : k + _CHUNK]).sum(axis=0)
        return out

    def power_kw(self, edges_s: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
        """Mean power per session and interval between consecutive ``edges_s`` [kW]."""
        e = self.energy_kwh(edges_s, sessions)
        return np.diff(e, axis=1) / (np.diff(np.asarray(edges_s, float)) / 3600.0)

    def total_power_kw(self, edges_s: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
        """Aggregate mean power per interval between consecutive ``edges_s`` [kW]."""
        e = self.total_energy_kwh(edges_s, sessions)
        return np.diff(e) / (np.diff(np.asarray(edges_s, float)) / 3600.0)


def interval_models(
    dt_s: np.ndarray,
    de_kwh: np.ndarray,
    p0_kw: np.ndarray,
    p1_kw: np.ndarray,
    b_first_s: np.ndarray,
    b_last_s: np.ndarray,
    n_breaks: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two inner knots per state interval, from the dip, step or constant model.

    Parameters
    ----------
    dt_s : numpy.ndarray
        Interval length ``Δ = t_{k+1} − t_k`` [s] (> 0).
    de_kwh : numpy.ndarray
        Interval energy ``E_{k+1} − E_k`` [kWh] (≥ 0).
    p0_kw, p1_kw : numpy.ndarray
        Power from the reported currents at ``t_k`` and ``t_{k+1}`` [kW].
    b_first_s, b_last_s : numpy.ndarray
        First and last known control instant inside the interval, from ``t_k`` [s].
    n_breaks : numpy.ndarray
        Number of such instants.

    Returns
    -------
    (ta_s, ea_kwh, tb_s, eb_kwh, model)
        Inner knots from ``t_k`` [s] and energies from ``E_k`` [kWh]; ``model`` is 0 dip,
        1 step, 2 constant. ``ta_s < tb_s`` always.

    Notes
    -----
    Dip: ``x = (ΔE − p_k·b₁ − p_{k+1}·(Δ − b_L)) / (b_L − b₁)``, used when
    ``0 ≤ x ≤ 1.1·max(p_k, p_{k+1}) + 0.5 kW``. Step: ``τ = (ΔE − p_{k+1}·Δ) / (p_k − p_{k+1})``,
    used when ``0 ≤ τ ≤ Δ``. Constant: ``ΔE / Δ``. Times in [h] inside the formulas.
    """
    h = 1.0 / 3600.0
    de = de_kwh
    # constant
    ta = dt_s / 3.0
    tb = 2.0 * dt_s / 3.0
    ea = de / 3.0
    eb = 2.0 * de / 3.0
    model = np.full(dt_s.shape, 2, dtype=np.int8)
    # step
    dp = p0_kw - p1_kw
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = (de / h - p1_kw * dt_s) / dp
    step = (np.abs(dp) > 1e-6) & (tau >= 0.0) & (tau <= dt_s)
    tau = np.where(step, tau, 0.0)
    tau_b = tau + (dt_s - tau) / 2.0
    s_ta = np.where(tau > 0, tau, (dt_s - tau) / 4.0)  # knot strictly inside the interval
    s_ea = np.where(tau > 0, p0_kw * tau * h, p1_kw * s_ta * h)
    s_eb = p0_kw * tau * h + p1_kw * (tau_b - tau) * h
    ta = np.where(step, s_ta, ta)
    tb = np.where(step, tau_b, tb)
    ea = np.where(step, s_ea, ea)
    eb = np.where(step, s_eb, eb)
    model[step] = 1
    # dip
    width = b_last_s - b_first_s
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (de / h - p0_kw * b_first_s - p1_kw * (dt_s - b_last_s)) / width
    dip = (n_breaks >= 2) & (width > 1.0) & (x >= 0.0)
    dip &= x <= 1.1 * np.maximum(p0_kw, p1_kw) + 0.5
    x = np.where(dip, x, 0.0)
    ta = np.where(dip, b_first_s, ta)
    tb = np.where(dip, b_last_s, tb)
    ea = np.where(dip, p0_kw * b_first_s * h, ea)
    eb = np.where(dip, p0_kw * b_first_s * h + x * width * h, eb)
    model[dip] = 0
    # never leave the interval's energy range (rounding of reported kWh)
    ea = np.clip(ea, 0.0, de)
    eb = np.clip(eb, ea, de)
    return ta, ea, tb, eb, model


def clean_states(states: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop duplicate states and make each session's cumulative energy non-decreasing.

    A state repeated with the same timestamp keeps its highest energy; a value below an earlier
    one of the same session (a late or corrected message) is raised to the running maximum.

    Returns
    -------
    (states, counts)
        Sorted by session and time; ``counts`` has ``duplicates`` and ``raised``.
    """
    df = states.sort_values(["session_id", "t_s", "e_kwh"], kind="stable")
    dup = df.duplicated(["session_id", "t_s"], keep="last")
    df = df[~dup.to_numpy()].reset_index(drop=True)
    running = df.groupby("session_id", sort=False)["e_kwh"].cummax().to_numpy()
    raised = int((running > df["e_kwh"].to_numpy() + 1e-12).sum())
    df["e_kwh"] = running
    return df, {"duplicates": int(dup.sum()), "raised": raised}


def reconstruct(
    states: pd.DataFrame, breaks_s: Sequence[float] | np.ndarray = (), voltage_v: float = 230.0
) -> Reconstruction:
    """Rebuild every session's cumulative energy from its states.

    Parameters
    ----------
    states : pandas.DataFrame
        As returned by :func:`measurement.io.load_states`.
    breaks_s : sequence of float
        Known control instants [s since epoch] (activation ``t_signal`` and ``t_clear``).
    voltage_v : float
        Phase voltage [V].

    Returns
    -------
    Reconstruction
    """
    df, _ = clean_states(states)
    sid = df["session_id"].to_numpy()
    starts = np.r_[0, np.nonzero(sid[1:] != sid[:-1])[0] + 1]
    n = starts.size
    counts = np.diff(np.r_[starts, sid.size])
    t = df["t_s"].to_numpy(float)
    e = df["e_kwh"].to_numpy(float)
    p = df["p_kw"].to_numpy(float)
    origin = float(t.min())
    span = 4.0 * (float(t.max()) - origin + 86_400.0)
    session_of = np.repeat(np.arange(n), counts)
    tr = t - origin

    # intervals between consecutive states of one session
    nxt = np.arange(sid.size - 1)
    nxt = nxt[session_of[nxt] == session_of[nxt + 1]]
    dt_s = tr[nxt + 1] - tr[nxt]
    de = e[nxt + 1] - e[nxt]
    br = np.sort(np.asarray(breaks_s, float)) - origin
    lo = np.searchsorted(br, tr[nxt], side="right")
    hi = np.searchsorted(br, tr[nxt + 1], side="left")
    n_br = hi - lo
    b1 = np.where(n_br > 0, br[np.minimum(lo, max(br.size - 1, 0))] if br.size else 0.0, 0.0)
    bl = np.where(n_br > 0, br[np.maximum(hi - 1, 0)] if br.size else 0.0, 0.0)
    b1 = b1 - np.where(n_br > 0, tr[nxt], 0.0)
    bl = bl - np.where(n_br > 0, tr[nxt], 0.0)
    ta, ea, tb, eb, model = interval_models(dt_s, de, p[nxt], p[nxt + 1], b1, bl, n_br)

    # knots: each state, then the two inner knots of the interval it opens
    has_next = np.zeros(sid.size, dtype=bool)
    has_next[nxt] = True
    per_state = 1 + 2 * has_next.astype(int)
    pos = np.r_[0, np.cumsum(per_state)[:-1]]
    m = int(per_state.sum())
    kt = np.empty(m)
    ke = np.empty(m)
    shift = session_of * span
    kt[pos] = tr + shift
    ke[pos] = e
    kt[pos[nxt] + 1] = tr[nxt] + ta + shift[nxt]
    ke[pos[nxt] + 1] = e[nxt] + ea
    kt[pos[nxt] + 2] = tr[nxt] + tb + shift[nxt]
    ke[pos[nxt] + 2] = e[nxt] + eb
    # guards so that a query before/after a session stays flat
    first = pos[starts]
    last = pos[starts + counts - 1]
    gt = np.r_[kt, kt[first] - 0.45 * span, kt[last] + 0.45 * span]
    ge = np.r_[ke, ke[first], ke[last]]
    order = np.argsort(gt, kind="stable")

    min_a = df["min_current_a"].to_numpy(float)[starts]
    phases = df["phases"].to_numpy(int)
    ph = np.maximum.reduceat(phases, starts)
    return Reconstruction(
        session_ids=sid[starts],
        opt_out=(
            np.logical_or.reduceat(df["opt_out"].to_numpy(bool), starts)
            if "opt_out" in df
            else np.zeros(n, bool)
        ),
        station=df["station"].to_numpy(object)[starts],
        subcluster=df["subcluster"].to_numpy(object)[starts],
        region=df["region"].to_numpy(object)[starts],
        phases=ph,
        min_power_kw=min_a * ph * voltage_v / 1000.0,
        first_s=t[starts],
        last_s=t[starts + counts - 1],
        knot_t_s=gt[order],
        knot_e_kwh=ge[order],
        origin_s=origin,
        span_s=span,
        models={
            "dip": int((model == 0).sum()),
            "step": int((model == 1).sum()),
            "constant": int((model == 2).sum()),
        },
    )


def isp_edges_s(first_s: float, last_s: float, isp_s: int = ISP_S) -> np.ndarray:
    """ISP boundaries [s since epoch] covering ``[first_s, last_s]``, on the UTC ISP grid."""
    lo = np.floor(first_s / isp_s) * isp_s
    hi = np.ceil(last_s / isp_s) * isp_s
    return np.arange(lo, hi + isp_s / 2, isp_s)


def station_isp_energy(rec: Reconstruction, edges_s: np.ndarray) -> pd.DataFrame:
    """Reconstructed energy per station and ISP [kWh].

    Returns
    -------
    pandas.DataFrame
        Index ``station``, columns the ISP starts [s since epoch].
    """
    long = group_isp_energy(rec, edges_s, "station")
    table = long.pivot(index="station", columns="start_s", values="e_kwh")
    table.columns = edges_s[:-1]
    return table


def group_isp_energy(rec: Reconstruction, edges_s: np.ndarray, by: str) -> pd.DataFrame:
    """Reconstructed energy per ``by`` (``station``, ``subcluster`` or ``region``) and ISP [kWh].

    Returns
    -------
    pandas.DataFrame
        Long form: ``start_s`` [s since epoch], ``by``, ``e_kwh``.
    """
    labels, inv = np.unique(getattr(rec, by).astype(str), return_inverse=True)
    out = np.zeros((labels.size, edges_s.size - 1))
    for k in range(0, rec.n_sessions, _CHUNK):
        idx = np.arange(k, min(k + _CHUNK, rec.n_sessions))
        np.add.at(out, inv[idx], np.diff(rec.energy_kwh(edges_s, idx), axis=1))
    return pd.DataFrame(
        {
            "start_s": np.tile(edges_s[:-1], labels.size),
            by: np.repeat(labels, edges_s.size - 1),
            "e_kwh": out.ravel(),
        }
    )


def estimate_idle_kw(
    meters: pd.DataFrame, reconstructed: pd.DataFrame, isp_s: int = ISP_S
) -> pd.Series:
    """Idle consumption per station [kW] from the ISPs in which no session charged there.

    ``P_idle,s = mean over ISPs q with Ê_s,q = 0 of E^meter_s,q / Δ_ISP``; a station that
    was never idle in the data takes the fleet median.

    Parameters
    ----------
    meters : pandas.DataFrame
        From :func:`measurement.io.load_meters`.
    reconstructed : pandas.DataFrame
        From :func:`station_isp_energy`.
    """
    table = meter_table(meters, reconstructed)
    idle = table[table["reconstructed_kwh"] <= 1e-9]
    per = idle.groupby("station")["meter_kwh"].mean() / (isp_s / 3600.0)
    fleet = float(per.median()) if len(per) else 0.0
    stations = pd.Index(sorted(set(table["station"])), name="station")
    return per.reindex(stations).fillna(fleet).rename("idle_kw")


def meter_table(meters: pd.DataFrame, reconstructed: pd.DataFrame) -> pd.DataFrame:
    """Meter and reconstructed energy side by side per station and ISP [kWh].

    Only the (station, ISP) pairs present in both are kept.
    """
    long = reconstructed.stack()
    rec = pd.DataFrame(
        {
            "station": long.index.get_level_values(0).astype(str),
            "start_s": long.index.get_level_values(1).astype(float),
            "reconstructed_kwh": long.to_numpy(),
        }
    )
    m = meters.rename(columns={"e_kwh": "meter_kwh"})
    return m.merge(rec, on=["station", "start_s"], how="inner")


def compare_meters(
    meters: pd.DataFrame, reconstructed: pd.DataFrame, isp_s: int = ISP_S
) -> dict[str, object]:
    """Reconstructed vs meter energy per ISP, before and after idle correction.

    The relative error is taken on the energy summed over all stations per ISP
    (``|Σ_s Ê_s,q − Σ_s E^meter_s,q| / Σ_s E^meter_s,q``), over ISPs with charging energy.

    Returns
    -------
    dict
        ``idle_kw`` (fleet median [kW]), ``isp`` (a frame per ISP: meter, reconstructed and
        corrected energy [kWh]) and error figures in [%]: ``mape_pct_before``,
        ``mape_pct_after``, ``bias_pct_before``, ``bias_pct_after``.
    """
    idle = estimate_idle_kw(meters, reconstructed, isp_s)
    table = meter_table(meters, reconstructed)
    table["corrected_kwh"] = table["reconstructed_kwh"] + table["station"].map(idle).to_numpy() * (
        isp_s / 3600.0
    )
    isp = table.groupby("start_s")[["meter_kwh", "reconstructed_kwh", "corrected_kwh"]].sum()
    used = isp[isp["reconstructed_kwh"] > 0]
    out: dict[str, object] = {"idle_kw": float(idle.median()) if len(idle) else 0.0, "isp": isp}
    for label, col in (("before", "reconstructed_kwh"), ("after", "corrected_kwh")):
        err = (used[col] - used["meter_kwh"]) / used["meter_kwh"]
        out[f"mape_pct_{label}"] = float(100 * err.abs().mean()) if len(err) else float("nan")
        tot = used["meter_kwh"].sum()
        out[f"bias_pct_{label}"] = float(100 * (used[col].sum() - tot) / tot) if tot else 0.0
    out["isps"] = len(used)
    return out
