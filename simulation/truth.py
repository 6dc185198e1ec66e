"""Ground truth for measurement: one simulated day of charging under a schedule, with
demand-response activations, the data a CSMS and the smart meters would send, and the
counterfactual day without activations.

:func:`simulate_day` runs the physics on a 1-minute grid from the scenario's start:

- every car draws ``min(profile, draw · connector limit · taper)`` per phase while plugged in
  and not full (``draw`` ~ U(0.96, 1.0): cars take a little less than offered; ``taper`` lowers
  the current linearly over the last :data:`TAPER_KWH` down to 30 %). Schedules switch at their
  step boundaries exactly (profiles carry their start times);
- an activation drops every session charging at ``t_signal`` (drawing power in the minute
  before) in its region (not opted out) to
  its station's minimum current from ``t_signal + d_on`` until ``t_clear + d_off``, the response
  delays ``d_on, d_off`` ~ U(2 s, 30 s) per session. Sessions that arrive during the activation
  follow their schedule;
- deliberately misbehaving stations (the injected set, :attr:`TruthDay.injected`) either
  **ignore curtailment** or **exceed the profile** (draw what the car can take whatever it was
  sent);
- the OCPI states: a state at plug-in (0 kWh) and every 5 minutes on the session's own clock
  (timestamp jitter ~ N(0, 2 s), clipped to ±8 s), the cumulative kWh rounded to Wh and the
  current per phase rounded to 0.1 A, a final state at departure; :data:`MISSING_SHARE` of the
  intermediate states are lost and :data:`DUPLICATE_SHARE` sent twice. Energy counts from the
  day's start for cars plugged in before it;
- the station smart meters: energy per 15-minute ISP, the charging energy plus an idle
  consumption of 4–5 W per station, times a gain error ~ N(1, 0.1 %), from a register in Wh;
- the imbalance price per ISP.

The counterfactual run uses the same random draws without the activations, so the true shifted
energy of every activation is ``Σ_i [E_i^cf(t_c) − E_i^cf(t_s)] − [E_i(t_c) − E_i(t_s)]``.
Activation instants fall on whole minutes, so the 1-minute truth is exact there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optimizer.network import compile_network
from optimizer.scenario import parse_scenario

MINUTE_S = 60
STATE_EVERY_S = 300
ISP_S = 900
TAPER_KWH = 1.5
JITTER_S = 2.0
JITTER_MAX_S = 8.0
MISSING_SHARE = 0.02
DUPLICATE_SHARE = 0.01
IDLE_KW = (0.004, 0.005)
METER_GAIN_SD = 0.001
MISBEHAVING_KINDS = ("ignore_curtailment", "exceed_profile")


@dataclass
class TruthDay:
    """A simulated day and its ground truth.

    Attributes
    ----------
    start_s : float
        Start of the 1-minute grid [s since epoch, UTC].
    session_ids, station, subcluster, region : numpy.ndarray
        Per session.
    power_kw, power_cf_kw : numpy.ndarray
        True mean power per session and minute, with and without activations [kW].
    states, meters, prices, activations : pandas.DataFrame
        The files a user would have (columns as in ``docs/MEASUREMENT.md``).
    injected : pandas.DataFrame
        The misbehaving stations: ``station, kind``.
    truth : pandas.DataFrame
        Per activation: ``id, sessions (curtailed), shifted_kwh, delivered_kwh,
        counterfactual_kwh``.
    """

    start_s: float
    session_ids: np.ndarray
    station: np.ndarray
    subcluster: np.ndarray
    region: np.ndarray
    power_kw: np.ndarray
    power_cf_kw: np.ndarray
    states: pd.DataFrame
    meters: pd.DataFrame
    prices: pd.DataFrame
    activations: pd.DataFrame
    injected: pd.DataFrame
    truth: pd.DataFrame

    @property
    def minutes(self) -> int:
        return int(self.power_kw.shape[1])

    def energy_kwh(self, t_s: np.ndarray, counterfactual: bool = False) -> np.ndarray:
        """True cumulative energy per session at instants ``t_s`` [kWh], from the day's start."""
        p = self.power_cf_kw if counterfactual else self.power_kw
        cum = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p / 60.0, axis=1)], axis=1)
        x = (np.asarray(t_s, float) - self.start_s) / MINUTE_S
        x = np.clip(x, 0, p.shape[1])
        k = np.minimum(np.floor(x).astype(int), p.shape[1] - 1)
        frac = x - k
        return cum[:, k] + frac * (cum[:, k + 1] - cum[:, k])

    def isp_energy_kwh(self) -> np.ndarray:
        """True energy per session and ISP [kWh], ``sessions × ISPs``."""
        per = ISP_S // MINUTE_S
        n, m = self.power_kw.shape
        return self.power_kw[:, : m - m % per].reshape(n, -1, per).sum(axis=2) / 60.0

    def write(self, out: Path) -> dict[str, Path]:
        """Write ``states.csv``, ``activations.csv``, ``meters.csv``, ``prices.csv``,
        ``injected.csv`` and ``truth.csv`` to ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frame in (
            ("states", self.states),
            ("activations", self.activations),
            ("meters", self.meters),
            ("prices", self.prices),
            ("injected", self.injected),
            ("truth", self.truth),
        ):
            path = out / f"{name}.csv"
            tmp = path.with_suffix(".csv.tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(path)
            paths[name] = path
        return paths


def iso_utc(t_s: np.ndarray) -> list[str]:
    """ISO-8601 UTC strings with ``Z`` (seconds resolution, milliseconds when needed)."""
    ts = pd.to_datetime(np.round(np.asarray(t_s, float), 3), unit="s", utc=True)
    text = ts.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return [s.replace(".000Z", "Z") for s in text]


def plan_activations(
    scenario: dict[str, Any],
    seed: int,
    gap_s: float = 8_400.0,
    spanning_share: float = 0.2,
) -> list[dict[str, Any]]:
    """Activations per region through the day, at least ``gap_s`` apart (so no session is
    curtailed for more than 30 minutes in any 4 hours).

    Each starts on a whole minute 0–10 minutes into an ISP and clears at the ISP's end, or, for
    ``spanning_share`` of them, 4–15 minutes after the signal, across the ISP boundary.
    """
    rng = np.random.Generator(np.random.PCG64([seed, 7]))
    start = datetime.fromisoformat(scenario["grid"]["start"]).astimezone(UTC).timestamp()
    length = scenario["grid"]["step_s"] * scenario["grid"]["steps"]
    regions = [n["id"] for n in scenario["nodes"] if n.get("parent") is None]
    out: list[dict[str, Any]] = []
    for region in regions:
        t = start + rng.uniform(1800, 3600)
        while t < start + length - 2 * ISP_S:
            isp = np.floor(t / ISP_S) * ISP_S
            t_sig = isp + 60 * int(rng.integers(0, 11))
            if rng.random() < spanning_share:
                t_clr = t_sig + 60 * int(rng.integers(4, 16))
                if t_clr <= isp + ISP_S:
                    t_clr = isp + ISP_S + 60 * int(rng.integers(1, 5))
            else:
                t_clr = isp + ISP_S
            out.append(
                {
                    "id": f"{region}-a{len(out) + 1:03d}",
                    "t_signal_s": float(t_sig),
                    "t_clear_s": float(t_clr),
                    "region": region,
                }
            )
            t = t_clr + gap_s * rng.uniform(1.0, 1.3)
    return out


def _sessions(scenario: dict[str, Any]) -> dict[str, Any]:
    sc = parse_scenario(scenario)
    net = compile_network(sc)
    start = sc.grid.start_utc.timestamp()
    node_parent = {n.id: n.parent for n in sc.nodes}

    def region_of(node: str) -> str:
        while node_parent.get(node) is not None:
            node = str(node_parent[node])
        return node

    station_node = np.array([net.node_ids[k] for k in net.station_node], dtype=object)
    st = net.session_station
    phase = np.argmax(net.phase_mask, axis=1)
    return {
        "net": net,
        "start_s": start,
        "arr_s": np.array([s.arrival.timestamp() for s in sc.sessions]),
        "dep_s": np.array([s.departure_or_default.timestamp() for s in sc.sessions]),
        "need": np.array(
            [np.inf if s.energy_kwh is None else s.energy_kwh for s in sc.sessions], dtype=float
        ),
        "station": np.array(net.station_ids, dtype=object)[st],
        "subcluster": station_node[st],
        "region": np.array([region_of(n) for n in station_node[st]], dtype=object),
        "phase": phase,
    }


def _physics(
    ses: dict[str, Any],
    sched_a: np.ndarray,
    minutes: int,
    draw: np.ndarray,
    d_on: np.ndarray,
    d_off: np.ndarray,
    ignore: np.ndarray,
    exceed: np.ndarray,
    activations: list[dict[str, Any]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean power per session and minute [kW]; the sessions each activation targeted."""
    net = ses["net"]
    start = ses["start_s"]
    n = net.n_sessions
    m_lo = start + MINUTE_S * np.arange(minutes)
    pres = np.clip(
        (
            np.minimum(ses["dep_s"][:, None], m_lo + MINUTE_S)
            - np.maximum(ses["arr_s"][:, None], m_lo)
        )
        / MINUTE_S,
        0.0,
        1.0,
    )
    step_of = (np.arange(minutes) * MINUTE_S) // net.grid.step_s
    rem = ses["need"].copy()
    curtail = np.zeros((n, minutes))
    by_minute: dict[int, list[int]] = {}
    for k, a in enumerate(activations):
        by_minute.setdefault(int((a["t_signal_s"] - start) // MINUTE_S), []).append(k)
    targeted: list[np.ndarray] = [np.zeros(0, int)] * len(activations)
    power = np.zeros((n, minutes))
    kwh_per_a_min = net.kw_per_a / 60.0
    for m in range(minutes):
        for k in by_minute.get(m, []):
            a = activations[k]
            charging = power[:, m - 1] > 0 if m > 0 else np.zeros(n, bool)
            on = (pres[:, m] > 0) & (rem > 1e-9) & charging & ~net.opt_out
            if a.get("region"):
                on &= ses["region"] == a["region"]
            who = np.nonzero(on)[0]
            targeted[k] = who
            lo = a["t_signal_s"] + d_on[who]
            hi = a["t_clear_s"] + d_off[who]
            m_hi = int(np.ceil((a["t_clear_s"] + 60 - start) / MINUTE_S))
            for mm in range(m, min(m_hi, minutes)):
                a0 = m_lo[mm]
                frac = np.clip((np.minimum(hi, a0 + 60) - np.maximum(lo, a0)) / 60.0, 0, 1)
                curtail[who, mm] = np.maximum(curtail[who, mm], np.where(ignore[who], 0, frac))
        prof = sched_a[:, step_of[m]]
        lim = prof * (1 - curtail[:, m]) + np.minimum(prof, net.min_a) * curtail[:, m]
        taper = np.clip(rem / TAPER_KWH, 0.3, 1.0)
        cap = draw * net.max_a * taper
        i = np.where(exceed, cap, np.minimum(lim, cap))
        e = np.minimum(i * kwh_per_a_min * pres[:, m], np.maximum(rem, 0.0))
        rem = rem - e
        power[:, m] = e * 60.0
    return power, targeted


def simulate_day(
    scenario: dict[str, Any],
    schedule: dict[str, Any],
    activations: list[dict[str, Any]],
    seed: int,
    misbehaving_share: float = 0.03,
) -> TruthDay:
    """Simulate the day under ``schedule`` with and without ``activations``.

    Parameters
    ----------
    scenario : dict
        A ``gridcharge.scenario/1`` (e.g. from :func:`simulation.fleet.generate_scenario`).
    schedule : dict
        Its schedule (``optimizer.solve.solve_network``); currents per session and step [A].
    activations : list of dict
        ``id, t_signal_s, t_clear_s [s since epoch], region ('' or None = all)``, e.g. from
        :func:`plan_activations`.
    seed : int
        Seed of every random draw (cars, delays, states, meters, prices, misbehaving stations).
    misbehaving_share : float
        Share of stations injected as misbehaving [-].
    """
    ses = _sessions(scenario)
    net = ses["net"]
    n = net.n_sessions
    start = ses["start_s"]
    minutes = net.steps * net.grid.step_s // MINUTE_S
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    sched = np.zeros((n, net.steps))
    for k, sid in enumerate(net.session_ids):
        sched[k] = schedule["sessions"][sid]["current_a"]
    draw = rng.uniform(0.96, 1.0, n)
    d_on = rng.uniform(2.0, 30.0, n)
    d_off = rng.uniform(2.0, 30.0, n)
    stations = np.array(net.station_ids, dtype=object)
    bad = rng.random(stations.size) < misbehaving_share
    kind = rng.integers(0, 2, stations.size)
    st_idx = net.session_station
    ignore = (bad & (kind == 0))[st_idx]
    exceed = (bad & (kind == 1))[st_idx]
    injected = pd.DataFrame(
        {"station": stations[bad], "kind": [MISBEHAVING_KINDS[k] for k in kind[bad]]}
    )

    power, targeted = _physics(ses, sched, minutes, draw, d_on, d_off, ignore, exceed, activations)
    power_cf, _ = _physics(ses, sched, minutes, draw, d_on, d_off, ignore, exceed, [])

    day = TruthDay(
        start_s=start,
        session_ids=np.array(net.session_ids, dtype=object),
        station=ses["station"],
        subcluster=ses["subcluster"],
        region=ses["region"],
        power_kw=power,
        power_cf_kw=power_cf,
        states=pd.DataFrame(),
        meters=pd.DataFrame(),
        prices=pd.DataFrame(),
        activations=pd.DataFrame(),
        injected=injected,
        truth=pd.DataFrame(),
    )
    end = start + minutes * MINUTE_S
    day.prices = _prices(rng, start, end, activations)
    price_of = dict(zip(day.prices["start_s_num"], day.prices["price_eur_per_mwh"], strict=True))
    day.prices = day.prices.drop(columns="start_s_num")
    act_rows = []
    truth_rows = []
    for a, who in zip(activations, targeted, strict=True):
        t = np.array([a["t_signal_s"], a["t_clear_s"]])
        e = day.energy_kwh(t)
        ecf = day.energy_kwh(t, counterfactual=True)
        in_region = np.ones(n, bool) if not a.get("region") else ses["region"] == a["region"]
        dlv = float((e[in_region, 1] - e[in_region, 0]).sum())
        cf = float((ecf[in_region, 1] - ecf[in_region, 0]).sum())
        act_rows.append(
            {
                "id": a["id"],
                "t_signal": iso_utc(np.array([a["t_signal_s"]]))[0],
                "t_clear": iso_utc(np.array([a["t_clear_s"]]))[0],
                "region": a.get("region") or "",
                "price_eur_per_mwh": price_of.get(np.floor(a["t_signal_s"] / ISP_S) * ISP_S),
            }
        )
        truth_rows.append(
            {
                "id": a["id"],
                "sessions": int(who.size),
                "shifted_kwh": round(cf - dlv, 6),
                "delivered_kwh": round(dlv, 6),
                "counterfactual_kwh": round(cf, 6),
            }
        )
    cols = ["id", "t_signal", "t_clear", "region", "price_eur_per_mwh"]
    day.activations = pd.DataFrame(act_rows, columns=cols)
    day.truth = pd.DataFrame(
        truth_rows, columns=["id", "sessions", "shifted_kwh", "delivered_kwh", "counterfactual_kwh"]
    )
    day.states = _states(rng, day, ses, sched, activations, targeted)
    day.meters = _meters(rng, day, stations)
    return day


def _prices(
    rng: np.random.Generator, start: float, end: float, activations: list[dict[str, Any]]
) -> pd.DataFrame:
    """Imbalance price per ISP [EUR/MWh]: a mean-reverting walk around 90 with spikes in the
    ISPs where an activation was signalled (the BRP was short)."""
    isp = np.arange(start, end, ISP_S)
    walk = np.zeros(isp.size)
    for k in range(1, isp.size):
        walk[k] = 0.8 * walk[k - 1] + rng.normal(0, 25)
    price = 90 + walk
    for a in activations:
        k = int((np.floor(a["t_signal_s"] / ISP_S) * ISP_S - start) // ISP_S)
        if 0 <= k < isp.size:
            price[k] = max(price[k], 0) + rng.uniform(150, 500)
    price = np.round(price, 2)
    return pd.DataFrame(
        {"start": iso_utc(isp), "price_eur_per_mwh": price, "start_s_num": isp.astype(float)}
    )


def _states(
    rng: np.random.Generator,
    day: TruthDay,
    ses: dict[str, Any],
    sched: np.ndarray,
    activations: list[dict[str, Any]],
    targeted: list[np.ndarray],
) -> pd.DataFrame:
    net = ses["net"]
    start = ses["start_s"]
    end = start + day.minutes * MINUTE_S
    arr, dep = ses["arr_s"], ses["dep_s"]
    k0 = np.maximum(np.ceil((start - arr) / STATE_EVERY_S), 0).astype(int)
    k1 = np.floor((np.minimum(dep, end - 1) - arr) / STATE_EVERY_S).astype(int)
    count = np.maximum(k1 - k0 + 1, 0)
    sess = np.repeat(np.arange(net.n_sessions), count)
    offs = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    tick = np.repeat(k0, count) + offs
    t = arr[sess] + tick * STATE_EVERY_S
    jitter = np.clip(rng.normal(0, JITTER_S, t.size), -JITTER_MAX_S, JITTER_MAX_S)
    t = np.where(tick > 0, t + jitter, t)
    t = np.minimum(t, np.minimum(dep[sess], end) - 1.0)
    # final state at departure
    fin = np.nonzero((dep < end) & (dep > start))[0]
    sess = np.r_[sess, fin]
    t = np.r_[t, dep[fin]]
    last = np.r_[np.zeros(t.size - fin.size, bool), np.ones(fin.size, bool)]
    first = np.r_[tick == 0, np.zeros(fin.size, bool)]
    lost = ~first & ~last & (rng.random(t.size) < MISSING_SHARE)
    sess, t = sess[~lost], t[~lost]
    twice = rng.random(t.size) < DUPLICATE_SHARE
    sess = np.r_[sess, sess[twice]]
    t = np.r_[t, t[twice]]
    order = np.lexsort((t, sess))
    sess, t = sess[order], t[order]

    pc = day.power_cf_kw  # only for shapes
    del pc
    x = np.clip((t - start) / MINUTE_S, 0, day.minutes)
    mi = np.minimum(np.floor(x).astype(int), day.minutes - 1)
    cum = np.concatenate(
        [np.zeros((net.n_sessions, 1)), np.cumsum(day.power_kw / 60.0, axis=1)], axis=1
    )
    kwh = cum[sess, mi] + (x - mi) * (cum[sess, mi + 1] - cum[sess, mi])
    i_now = day.power_kw[sess, mi] / net.kw_per_a[sess]
    i_now = np.round(i_now, 1)
    phases = net.n_phases[sess]
    cur = np.zeros((t.size, 3))
    three = phases == 3
    cur[three] = i_now[three, None]
    one = np.nonzero(~three)[0]
    cur[one, ses["phase"][sess[one]]] = i_now[one]
    step = np.minimum(((t - start) // net.grid.step_s).astype(int), net.steps - 1)
    profile = sched[sess, step]
    need = ses["need"][sess]  # the charging preferences' energy_need
    for a, who in zip(activations, targeted, strict=True):
        inw = (t >= a["t_signal_s"]) & (t < a["t_clear_s"]) & np.isin(sess, who)
        profile[inw] = np.minimum(profile[inw], net.min_a[sess[inw]])
    return pd.DataFrame(
        {
            "session_id": day.session_ids[sess],
            "timestamp": iso_utc(t),
            "kwh": np.round(kwh, 3),
            "current_l1_a": cur[:, 0],
            "current_l2_a": cur[:, 1],
            "current_l3_a": cur[:, 2],
            "phases": phases,
            "station": ses["station"][sess],
            "subcluster": ses["subcluster"][sess],
            "region": ses["region"][sess],
            "min_current_a": net.min_a[sess],
            "profile_a": np.round(profile, 2),
            "opt_out": net.opt_out[sess],
            "energy_need_kwh": np.round(np.where(np.isfinite(need), need, np.nan), 3),
        }
    )


def _meters(rng: np.random.Generator, day: TruthDay, stations: np.ndarray) -> pd.DataFrame:
    isp = day.isp_energy_kwh()
    st, inv = np.unique(day.station.astype(str), return_inverse=True)
    per = np.zeros((stations.size, isp.shape[1]))
    pos = {s: k for k, s in enumerate(stations)}
    rows = np.array([pos[s] for s in st])
    np.add.at(per, rows[inv], isp)
    idle = rng.uniform(*IDLE_KW, stations.size)
    gain = rng.normal(1.0, METER_GAIN_SD, stations.size)
    energy = (per + idle[:, None] * ISP_S / 3600.0) * gain[:, None]
    register = np.round(np.cumsum(energy, axis=1), 3)
    delta = np.diff(np.concatenate([np.zeros((stations.size, 1)), register], axis=1), axis=1)
    starts = iso_utc(day.start_s + ISP_S * np.arange(isp.shape[1]))
    return pd.DataFrame(
        {
            "station": np.repeat(stations, isp.shape[1]),
            "start": np.tile(starts, stations.size),
            "kwh": np.round(delta.ravel(), 3),
        }
    )


def profiles_table(schedule: dict[str, Any]) -> pd.DataFrame:
    """The profiles the simulated day follows, as ``gridcharge measure --profiles`` reads them:
    one row ``session_id, start, limit_a`` per session and change of its scheduled current
    [A] (the limit holds until the session's next row; a last row of 0 A ends it)."""
    grid = schedule["grid"]
    start = pd.Timestamp(grid["start"]).timestamp()
    step_s = int(grid["step_s"])
    rows: list[tuple[str, float, float]] = []
    for sid, entry in schedule["sessions"].items():
        cur = np.round(np.asarray(entry["current_a"], dtype=float), 2)
        change = np.r_[True, cur[1:] != cur[:-1]]
        for j in np.nonzero(change)[0]:
            rows.append((str(sid), start + step_s * float(j), float(cur[j])))
    frame = pd.DataFrame(rows, columns=["session_id", "t_s", "limit_a"])
    return pd.DataFrame(
        {
            "session_id": frame["session_id"],
            "start": iso_utc(frame["t_s"].to_numpy()),
            "limit_a": frame["limit_a"],
        }
    )
