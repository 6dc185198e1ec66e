"""Non-responding chargers, theoretical minimum power over time and the erasable-power curve
(equations in ``docs/MEASUREMENT.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from measurement.reconstruct import MINUTE_S, Reconstruction
from measurement.shifted import PRE_S, active_sessions, iso

TOLERANCE_A = 1.0
"""Current above the expected maximum [A] that counts as not following."""
GRACE_S = 60.0
"""Time a charger is given to follow a curtailment [s]."""
MIN_EXCESS_STATES = 2
"""States above the profile needed before a session counts as exceeding it."""
_CHUNK = 2_000


def non_responding(
    states: pd.DataFrame,
    rec: Reconstruction,
    activations: pd.DataFrame,
    tolerance_a: float = TOLERANCE_A,
    grace_s: float = GRACE_S,
    voltage_v: float = 230.0,
    sessions: Mapping[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions that did not follow a curtailment or drew more than their profile.

    A session (not opted out) *ignores a curtailment* when it charged above
    ``p_min + tolerance`` before the signal and, between ``t_signal + grace`` and
    ``t_clear``, a state reports a phase current above ``min_current_a + tolerance_a``; with
    no state in that window, when its reconstructed mean power over the activation exceeds
    ``p_min + tolerance·phases·V + (p̄ − p_min)·grace / (t_clear − t_signal)`` (``p̄`` its
    power before the signal). A session *exceeds its profile* when at least
    :data:`MIN_EXCESS_STATES` states report a phase current above the ``profile_a`` in force
    plus ``tolerance_a`` (states in the first ``grace`` after a signal are not counted).

    Parameters
    ----------
    states : pandas.DataFrame
        From :func:`measurement.io.load_states` (duplicates allowed).
    rec : Reconstruction
    activations : pandas.DataFrame
        From :func:`measurement.io.load_activations`.
    tolerance_a : float
        [A].
    grace_s : float
        [s].
    sessions : mapping, optional
        Per activation id, the indices into ``rec`` of the sessions it curtailed (the
        activation log); only those are checked for that activation. Default: every session
        charging in its region at the signal.

    Returns
    -------
    (evidence, stations)
        ``evidence``: one row per finding (``kind, activation, session_id, station, timestamp,
        current_a, expected_max_a, source``); ``stations``: per station the sessions found and
        the kinds, sorted by findings.
    """
    rows: list[dict[str, Any]] = []
    imax = states[["i_l1_a", "i_l2_a", "i_l3_a"]].to_numpy().max(axis=1)
    sid = states["session_id"].to_numpy()
    t = states["t_s"].to_numpy()
    pos = {s: k for k, s in enumerate(rec.session_ids)}
    for a in activations.itertuples(index=False):
        t0, t1 = float(a.t_signal_s), float(a.t_clear_s)
        idx = active_sessions(rec, t0, str(a.region))
        if sessions is not None:
            idx = idx[np.isin(idx, sessions.get(str(a.id), np.zeros(0, dtype=int)))]
        if idx.size == 0:
            continue
        pre = rec.power_kw(np.array([t0 - PRE_S, t0]), idx)[:, 0]
        tol_kw = tolerance_a * rec.phases[idx] * voltage_v / 1000.0
        curtailable = idx[(pre > rec.min_power_kw[idx] + tol_kw) & ~rec.opt_out[idx]]
        if curtailable.size == 0:
            continue
        ids = rec.session_ids[curtailable]
        inwin = (t >= t0 + grace_s) & (t <= t1) & np.isin(sid, ids)
        seen = set(sid[inwin])
        for k in np.nonzero(inwin)[0]:
            limit = float(states["min_current_a"].iat[k]) + tolerance_a
            if imax[k] > limit:
                rows.append(
                    _finding(
                        "ignored_curtailment", a.id, states, int(k), imax[k], limit - tolerance_a
                    )
                )
        rest = np.array([pos[s] for s in ids if s not in seen], dtype=int)
        if rest.size:
            # the mean over the whole activation may hold up to grace_s at the old power
            p_win = rec.power_kw(np.array([t0, t1]), rest)[:, 0]
            p_pre = rec.power_kw(np.array([t0 - PRE_S, t0]), rest)[:, 0]
            pmin = rec.min_power_kw[rest]
            allowed = (
                pmin
                + tolerance_a * rec.phases[rest] * voltage_v / 1000.0
                + np.maximum(p_pre - pmin, 0.0) * min(1.0, grace_s / (t1 - t0))
            )
            for k in np.nonzero(p_win > allowed)[0]:
                s = rest[k]
                rows.append(
                    {
                        "kind": "ignored_curtailment",
                        "activation": str(a.id),
                        "session_id": str(rec.session_ids[s]),
                        "station": str(rec.station[s]),
                        "timestamp": iso(t0),
                        "current_a": round(
                            float(p_win[k]) * 1000.0 / (voltage_v * rec.phases[s]), 2
                        ),
                        "expected_max_a": round(
                            float(rec.min_power_kw[s]) * 1000.0 / (voltage_v * rec.phases[s]), 2
                        ),
                        "source": "reconstructed mean over the activation",
                    }
                )
    prof = states["profile_a"].to_numpy(float)
    over = np.isfinite(prof) & (imax > prof + tolerance_a)
    for a in activations.itertuples(index=False):  # chargers get grace_s to follow a signal
        over &= ~((t >= float(a.t_signal_s)) & (t < float(a.t_signal_s) + grace_s))
    if over.any():
        counts = pd.Series(sid[over]).value_counts()
        repeat = set(counts[counts >= MIN_EXCESS_STATES].index)
        for k in np.nonzero(over)[0]:
            if sid[k] in repeat:
                rows.append(_finding("exceeded_profile", "", states, int(k), imax[k], prof[k]))
    cols = [
        "kind",
        "activation",
        "session_id",
        "station",
        "timestamp",
        "current_a",
        "expected_max_a",
        "source",
    ]
    evidence = pd.DataFrame(rows, columns=cols)
    evidence = evidence.drop_duplicates(["kind", "activation", "session_id", "timestamp"])
    return evidence.reset_index(drop=True), station_summary(evidence)


def station_summary(evidence: pd.DataFrame) -> pd.DataFrame:
    """Findings per station (``station, findings, sessions, kinds``), most findings first."""
    if evidence.empty:
        return pd.DataFrame(columns=["station", "findings", "sessions", "kinds"])
    g = evidence.groupby("station")
    stations = pd.DataFrame(
        {
            "findings": g.size(),
            "sessions": g["session_id"].nunique(),
            "kinds": g["kind"].agg(lambda k: ",".join(sorted(set(k)))),
        }
    ).reset_index()
    stations = stations.sort_values(["findings", "station"], ascending=[False, True])
    return stations.reset_index(drop=True)


def _finding(
    kind: str, activation: Any, states: pd.DataFrame, k: int, current: float, expected: float
) -> dict[str, Any]:
    return {
        "kind": kind,
        "activation": str(activation),
        "session_id": str(states["session_id"].iat[k]),
        "station": str(states["station"].iat[k]),
        "timestamp": iso(float(states["t_s"].iat[k])),
        "current_a": round(float(current), 2),
        "expected_max_a": round(float(expected), 2),
        "source": "state",
    }


def fleet_power(
    rec: Reconstruction, start_s: float, end_s: float, step_s: float = MINUTE_S
) -> pd.DataFrame:
    """Actual, theoretical-minimum and erasable power of all sessions per interval [kW].

    ``P_min(t) = Σ_i min(p_i(t), p_min,i)`` (every session above its minimum set to it) and
    ``P_erasable(t) = P(t) − P_min(t) = Σ_i max(p_i(t) − p_min,i, 0)``.

    Returns
    -------
    pandas.DataFrame
        Index: interval start [s since epoch]; columns ``p_kw``, ``p_min_kw``, ``erasable_kw``.
    """
    edges = np.arange(start_s, end_s + step_s / 2, step_s)
    p = np.zeros(edges.size - 1)
    pmin = np.zeros_like(p)
    for k in range(0, rec.n_sessions, _CHUNK):
        idx = np.arange(k, min(k + _CHUNK, rec.n_sessions))
        per = rec.power_kw(edges, idx)
        p += per.sum(axis=0)
        pmin += np.minimum(per, rec.min_power_kw[idx, None]).sum(axis=0)
    return pd.DataFrame(
        {"p_kw": p, "p_min_kw": pmin, "erasable_kw": p - pmin},
        index=pd.Index(edges[:-1], name="start_s"),
    )


def erasable_by_hour(power: pd.DataFrame, tz: str = "UTC") -> pd.DataFrame:
    """The flexibility curve: erasable power by hour of day in ``tz`` [kW].

    Parameters
    ----------
    power : pandas.DataFrame
        From :func:`fleet_power`.

    Returns
    -------
    pandas.DataFrame
        Per hour 0–23: ``mean_kw``, ``p10_kw``, ``p50_kw``, ``p90_kw`` over all minutes of
        that hour in the history, and ``minutes``.
    """
    when = pd.to_datetime(power.index.to_numpy(float), unit="s", utc=True).tz_convert(tz)
    g = power["erasable_kw"].groupby(when.hour)
    out = pd.DataFrame(
        {
            "mean_kw": g.mean(),
            "p10_kw": g.quantile(0.1),
            "p50_kw": g.quantile(0.5),
            "p90_kw": g.quantile(0.9),
            "minutes": g.size(),
        }
    )
    out.index.name = "hour"
    return out.reindex(range(24))
