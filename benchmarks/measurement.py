"""Measurement accuracy against simulator ground truth; writes docs/BENCHMARKS.md and the
results section of docs/MEASUREMENT.md.

For each seed a Rotterdam-like network (default 2,000 stations, two DSO regions) is scheduled
with the greedy method and simulated (:mod:`simulation.truth`) with activations per region
every 2h20–3h; the measurement then sees only the states, meters, prices and the activation
log. Figures:

- reconstructed energy per ISP vs the true energy, for each region (about 3,000 sessions) and
  each subcluster with at least 100 sessions, plus the error vs the smart meters before and after
  idle correction. ISPs of the day's first and last hour are left out (cars plugged in across
  midnight have no state at the day's edges);
- shifted energy per activation vs the counterfactual truth;
- non-responding chargers found vs the injected misbehaving stations that misbehaved visibly
  (had a session curtailed above its minimum, or drew above its profile in two states).

Run: ``python -m benchmarks.measurement [--stations 2000] [--seeds 1,2,3]``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.run import append_results, machine
from measurement.flexibility import non_responding
from measurement.io import load_activations, load_meters, load_prices, load_states
from measurement.reconstruct import compare_meters, isp_edges_s, reconstruct, station_isp_energy
from measurement.shifted import Plan, estimate_cars, measure_activations, plan_shifted
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.fleet import generate_scenario
from simulation.truth import plan_activations, simulate_day

DOCS = Path(__file__).resolve().parents[1] / "docs"
MIN_SESSIONS = 100
MARKER = "<!-- measurement-results -->"


def one_day(stations: int, seed: int) -> dict[str, Any]:
    """Simulate, measure and compare one day; returns the raw error arrays."""
    t0 = time.perf_counter()
    sc = generate_scenario(stations=stations, seed=seed)
    parsed = parse_scenario(sc)
    net = compile_network(parsed)
    schedule = solve_network(net, "greedy")
    acts = plan_activations(sc, seed)
    day = simulate_day(sc, schedule, acts, seed)
    t_sim = time.perf_counter() - t0

    t1 = time.perf_counter()
    states = load_states(day.states)
    activations = load_activations(day.activations)
    meters = load_meters(day.meters)
    prices = load_prices(day.prices)
    rec = reconstruct(states, np.r_[activations["t_signal_s"], activations["t_clear_s"]])
    results = measure_activations(rec, activations, prices)
    plain = {r.id: r.shifted_kwh for r in measure_activations(rec, activations, prices, False)}
    # the plan in force at every signal: the published schedule (no re-optimisation in between)
    grid0 = parsed.grid.start_utc.timestamp()
    plan = Plan(
        session_ids=np.array(net.session_ids, dtype=object),
        edges_s=grid0 + net.grid.step_s * np.arange(net.steps + 1),
        limits_a=np.array(
            [schedule["sessions"][sid]["current_a"] for sid in net.session_ids], dtype=float
        ),
    )
    by_plan = {
        str(a.id): plan_shifted(
            rec, float(a.t_signal_s), float(a.t_clear_s), plan, str(a.region)
        ).shifted_kwh
        for a in activations.itertuples(index=False)
    }
    # the per-session baseline with each car's own maximum, need and taper from the states
    # (the headline of `gridcharge measure --profiles`), and the same without stated needs
    cars = estimate_cars(states, rec, activations, plan)
    cars_no_need = estimate_cars(states.assign(energy_need_kwh=np.nan), rec, activations, plan)
    by_session = {
        r.id: r.shifted_kwh
        for r in measure_activations(rec, activations, prices, plan=plan, cars=cars)
    }
    by_session_no_need = {
        str(a.id): plan_shifted(
            rec,
            float(a.t_signal_s),
            float(a.t_clear_s),
            plan,
            str(a.region),
            cars=cars_no_need,
        ).shifted_kwh
        for a in activations.itertuples(index=False)
    }
    by_taper = {
        str(a.id): plan_shifted(
            rec, float(a.t_signal_s), float(a.t_clear_s), plan, str(a.region), taper_kwh=1.5
        ).shifted_kwh
        for a in activations.itertuples(index=False)
    }
    evidence, flagged = non_responding(states, rec, activations)
    edges = isp_edges_s(day.start_s, day.start_s + day.minutes * 60 - 1)
    inner = (meters["start_s"] >= day.start_s + 3600) & (
        meters["start_s"] < day.start_s + day.minutes * 60 - 3600
    )
    meter = compare_meters(meters[inner], station_isp_energy(rec, edges))
    t_meas = time.perf_counter() - t1

    # energy per ISP: reconstructed vs true, per region and subcluster (>= MIN_SESSIONS)
    pos = {s: k for k, s in enumerate(rec.session_ids)}
    true_isp = day.isp_energy_kwh()
    keep = slice(4, true_isp.shape[1] - 4)
    rec_isp = np.zeros_like(true_isp)
    have = np.array([s in pos for s in day.session_ids])
    idx = np.array([pos[s] for s in day.session_ids[have]])
    for k in range(0, idx.size, 2000):
        rec_isp[np.nonzero(have)[0][k : k + 2000]] = np.diff(
            rec.energy_kwh(edges, idx[k : k + 2000]), axis=1
        )
    groups: list[dict[str, Any]] = []
    for kind, labels in (("region", day.region), ("subcluster", day.subcluster)):
        for g in np.unique(labels.astype(str)):
            m = labels == g
            if m.sum() < MIN_SESSIONS:
                continue
            tr = true_isp[m].sum(axis=0)[keep]
            rc = rec_isp[m].sum(axis=0)[keep]
            ok = tr > 1.0
            err = 100 * np.abs(rc[ok] - tr[ok]) / tr[ok]
            groups.append(
                {"kind": kind, "id": g, "sessions": int(m.sum()), "errors_pct": err.tolist()}
            )
    # meters vs truth (with idle) for reference: the meter table already includes idle
    truth = day.truth.set_index("id")
    shifted = []
    for r in results:
        t = truth.loc[r.id]
        shifted.append(
            {
                "id": r.id,
                "true_kwh": float(t["shifted_kwh"]),
                "true_cf_kwh": float(t["counterfactual_kwh"]),
                "est_kwh": r.shifted_kwh,
                "plain_kwh": plain[r.id],
                "hold_kwh": r.hold_shifted_kwh,
                "plan_kwh": by_plan[r.id],
                "taper_kwh": by_taper[r.id],
                "session_kwh": by_session[r.id],
                "session_no_need_kwh": by_session_no_need[r.id],
                "sessions": r.sessions,
                "ratio": r.performance_ratio,
            }
        )
    # detection
    visible = visible_misbehaviour(day, activations, rec)
    found = set(flagged["station"]) if len(flagged) else set()
    injected = set(day.injected["station"])
    good = set(day.station.astype(str)) - injected
    return {
        "seed": seed,
        "sessions": int(rec.n_sessions),
        "states": len(states),
        "activations": len(results),
        "sim_s": t_sim,
        "measure_s": t_meas,
        "groups": groups,
        "shifted": shifted,
        "meter": {k: v for k, v in meter.items() if k != "isp"},
        "injected": len(injected),
        "visible": len(visible),
        "found_visible": len(found & visible),
        "found_injected": len(found & injected),
        "false_positives": len(found - injected),
        "good_stations": len(good),
        "models": rec.models,
        "cars": {
            "sessions": int(cars.known.size),
            "known_maximum": int(cars.known.sum()),
            "fleet_ratio": cars.fleet_ratio,
            "with_need": int(np.isfinite(cars.need_kwh).sum()),
            "taper_kwh": cars.taper_kwh,
            "taper_floor": cars.taper_floor,
            "taper_kwh_without_stated_needs": cars_no_need.taper_kwh,
        },
        "evidence_rows": len(evidence),
    }


def visible_misbehaviour(day: Any, activations: pd.DataFrame, rec: Any) -> set[str]:
    """Injected stations whose misbehaviour shows in the data: an ``ignore_curtailment``
    station with a session charging above its minimum + 1 A at a signal in its region, an
    ``exceed_profile`` station with two states drawing above the profile + 1 A."""
    kinds = dict(zip(day.injected["station"], day.injected["kind"], strict=True))
    out: set[str] = set()
    st = day.states
    imax = st[["current_l1_a", "current_l2_a", "current_l3_a"]].to_numpy().max(axis=1)
    over = (imax > st["profile_a"].to_numpy() + 1.0) & st["station"].isin(kinds).to_numpy()
    counts = st.loc[over].groupby("session_id").size()
    for sid in counts[counts >= 2].index:
        out.add(str(st.loc[st["session_id"] == sid, "station"].iloc[0]))
    ignore = [s for s, k in kinds.items() if k == "ignore_curtailment"]
    sel = np.isin(day.station.astype(str), ignore)
    for a in activations.itertuples(index=False):
        m = int((a.t_signal_s - day.start_s) // 60)
        for k in np.nonzero(sel & (day.region == a.region))[0]:
            p = day.power_cf_kw[k, m - 1 : m + 2]
            row = st[st["session_id"] == day.session_ids[k]]
            if row.empty:
                continue
            ph = int(row["phases"].iloc[0])
            pmin = float(row["min_current_a"].iloc[0]) * ph * 0.23
            if p.size and p.min() > pmin + ph * 0.23 and not bool(row["opt_out"].iloc[0]):
                out.add(str(day.station[k]))
    return out


def summarise(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate figures over the days."""
    reg = [e for d in days for g in d["groups"] if g["kind"] == "region" for e in g["errors_pct"]]
    sub = [
        e for d in days for g in d["groups"] if g["kind"] == "subcluster" for e in g["errors_pct"]
    ]
    n_sub = sum(1 for d in days for g in d["groups"] if g["kind"] == "subcluster")
    sh = pd.DataFrame([s for d in days for s in d["shifted"]])
    sh["err_pct"] = 100 * (sh["est_kwh"] - sh["true_kwh"]) / sh["true_kwh"].abs()
    sh["plain_err_pct"] = 100 * (sh["plain_kwh"] - sh["true_kwh"]) / sh["true_kwh"].abs()
    sh["hold_err_pct"] = 100 * (sh["hold_kwh"] - sh["true_kwh"]) / sh["true_kwh"].abs()
    sh["plan_err_pct"] = 100 * (sh["plan_kwh"] - sh["true_kwh"]) / sh["true_kwh"].abs()
    sh["taper_err_pct"] = 100 * (sh["taper_kwh"] - sh["true_kwh"]) / sh["true_kwh"].abs()
    big = sh[sh["true_kwh"] >= 5.0]
    deep = sh[sh["true_kwh"] >= 0.1 * sh["true_cf_kwh"]]
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    visible = sum(d["visible"] for d in days)
    good = sum(d["good_stations"] for d in days)
    return {
        "sessions": sum(d["sessions"] for d in days),
        "isp_region": {
            "isps": len(reg),
            "mean_abs_pct": float(np.mean(reg)),
            "p95_abs_pct": float(np.percentile(reg, 95)),
            "max_abs_pct": float(np.max(reg)),
        },
        "isp_subcluster": {
            "groups": n_sub,
            "isps": len(sub),
            "mean_abs_pct": float(np.mean(sub)) if sub else None,
            "p95_abs_pct": float(np.percentile(sub, 95)) if sub else None,
        },
        "meters": {
            k: float(np.mean([d["meter"][k] for d in days]))
            for k in ("mape_pct_before", "mape_pct_after", "bias_pct_before", "bias_pct_after")
        },
        "shifted": {
            "activations": len(sh),
            "median_abs_err_pct": float(sh["err_pct"].abs().median()),
            "median_err_pct": float(sh["err_pct"].median()),
            "quantiles_err_pct": {str(k): float(v) for k, v in sh["err_pct"].quantile(q).items()},
            "within_5_pct": float((sh["err_pct"].abs() <= 5).mean()),
            "activations_ge_5kwh": len(big),
            "median_abs_err_pct_ge_5kwh": float(big["err_pct"].abs().median()),
            "activations_ge_10pct": len(deep),
            "median_abs_err_pct_ge_10pct": float(deep["err_pct"].abs().median()),
            "plain_median_abs_err_pct": float(sh["plain_err_pct"].abs().median()),
            "plain_median_err_pct": float(sh["plain_err_pct"].median()),
            "plain_within_5_pct": float((sh["plain_err_pct"].abs() <= 5).mean()),
            "hold_median_abs_err_pct": float(sh["hold_err_pct"].abs().median()),
            "hold_median_err_pct": float(sh["hold_err_pct"].median()),
            "hold_within_5_pct": float((sh["hold_err_pct"].abs() <= 5).mean()),
            "plan_median_abs_err_pct": float(sh["plan_err_pct"].abs().median()),
            "plan_median_err_pct": float(sh["plan_err_pct"].median()),
            "plan_within_5_pct": float((sh["plan_err_pct"].abs() <= 5).mean()),
            "plan_quantiles_err_pct": {
                str(k): float(v) for k, v in sh["plan_err_pct"].quantile(q).items()
            },
            "plan_abs_quantiles_err_pct": {
                str(k): float(v) for k, v in sh["plan_err_pct"].abs().quantile(q).items()
            },
            "total_plan_kwh": float(sh["plan_kwh"].sum()),
            "plan_median_abs_err_pct_ge_10pct": float(deep["plan_err_pct"].abs().median()),
            "taper_median_abs_err_pct": float(sh["taper_err_pct"].abs().median()),
            "taper_median_err_pct": float(sh["taper_err_pct"].median()),
            "taper_within_5_pct": float((sh["taper_err_pct"].abs() <= 5).mean()),
            "total_true_kwh": float(sh["true_kwh"].sum()),
            "total_est_kwh": float(sh["est_kwh"].sum()),
        },
        "non_responding": {
            "injected": sum(d["injected"] for d in days),
            "visible": visible,
            "found_visible": sum(d["found_visible"] for d in days),
            "recall_visible": sum(d["found_visible"] for d in days) / visible if visible else None,
            "false_positives": sum(d["false_positives"] for d in days),
            "fp_rate_of_good_stations": sum(d["false_positives"] for d in days) / good,
            "fp_share_of_flagged": sum(d["false_positives"] for d in days)
            / max(1, sum(d["found_injected"] + d["false_positives"] for d in days)),
        },
        "errors_pct": sh["err_pct"].round(3).tolist(),
        "plan_errors_pct": sh["plan_err_pct"].round(3).tolist(),
        "methods": {name: method_stats(sh, col, deep.index) for name, col in METHODS.items()},
        "cars": [d["cars"] for d in days],
    }


METHODS = {
    "session": "session_kwh",
    "session_no_need": "session_no_need_kwh",
    "trapezoid": "est_kwh",
    "plain_trapezoid": "plain_kwh",
    "hold": "hold_kwh",
    "plan": "plan_kwh",
    "plan_taper": "taper_kwh",
}
"""Shifted-energy methods compared (name → column of the per-activation table)."""
METHOD_TEXT = {
    "session": "per-session baseline, car's own maximum + need + learned taper (headline)",
    "session_no_need": "the same without stated needs (need only where seen full or planned)",
    "trapezoid": "trapezoid, stopped sessions apart (the issue's reference method)",
    "plain_trapezoid": "plain aggregate trapezoid (`split_stopped=False`)",
    "hold": "sessions held at their pre-signal power",
    "plan": "plan baseline, profile limit (`plan_shifted` without `cars`)",
    "plan_taper": "plan baseline + fixed 1.5 kWh taper, need from the plan",
}


METHOD_HEAD = (
    "| method | median abs | median | quantiles | 90 % of abs | within 5 % "
    "| median abs, ≥ 10 % shifted | total kWh |\n|---|---:|---:|---|---:|---:|---:|---:|"
)


def method_stats(sh: pd.DataFrame, col: str, deep: pd.Index) -> dict[str, Any]:
    """Error distribution of one method over the activations: ``err = 100 · (estimate −
    true) / |true|`` [%]."""
    err = 100 * (sh[col] - sh["true_kwh"]) / sh["true_kwh"].abs()
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    return {
        "activations": int(err.size),
        "median_abs_err_pct": float(err.abs().median()),
        "median_err_pct": float(err.median()),
        "quantiles_err_pct": {str(k): float(v) for k, v in err.quantile(q).items()},
        "abs_quantiles_err_pct": {str(k): float(v) for k, v in err.abs().quantile(q).items()},
        "within_5_pct": float((err.abs() <= 5).mean()),
        "median_abs_err_pct_ge_10pct": float(err[deep].abs().median()),
        "total_kwh": float(sh[col].sum()),
        "errors_pct": err.round(3).tolist(),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} %"


def to_markdown(
    s: dict[str, Any], args: argparse.Namespace, when: str, where: str, secs: float
) -> str:
    """The results section (markdown)."""
    r, sc, m = s["isp_region"], s["isp_subcluster"], s["meters"]
    sh, nr = s["shifted"], s["non_responding"]
    qs = ", ".join(f"{float(k):.0%}: {v:+.1f} %" for k, v in sh["quantiles_err_pct"].items())
    pq = ", ".join(f"{float(k):.0%}: {v:+.1f} %" for k, v in sh["plan_quantiles_err_pct"].items())
    bins = [-50, -20, -10, -5, -2, 0, 2, 5, 10, 20, 50]
    ms = s["methods"]
    hists = {
        m: np.histogram(np.clip(ms[m]["errors_pct"], -50, 50), bins=bins)[0]
        for m in ("session", "trapezoid", "plan")
    }
    edges = np.asarray(bins, dtype=float)
    hist_rows = "\n".join(
        f"| {edges[k]:+.0f} … {edges[k + 1]:+.0f} % | {hists['session'][k]} "
        f"| {hists['trapezoid'][k]} | {hists['plan'][k]} |"
        for k in range(edges.size - 1)
    )
    method_rows = "\n".join(
        f"| {METHOD_TEXT[m]} | {v['median_abs_err_pct']:.1f} % | {v['median_err_pct']:+.1f} % | "
        + " / ".join(f"{x:+.1f}" for x in v["quantiles_err_pct"].values())
        + f" % | {v['abs_quantiles_err_pct']['0.9']:.1f} % | {v['within_5_pct']:.0%} | "
        f"{v['median_abs_err_pct_ge_10pct']:.1f} % | {v['total_kwh']:.0f} |"
        for m, v in ms.items()
    )
    cars = s["cars"]
    head = ms["session"]
    rows = [
        (
            "energy per ISP, region (≥ 100 sessions), within 0.5 %",
            f"mean {_pct(r['mean_abs_pct'])}, p95 {_pct(r['p95_abs_pct'])}, "
            f"max {_pct(r['max_abs_pct'])} over {r['isps']} region-ISPs",
        ),
        (
            "energy per ISP, subclusters with ≥ 100 sessions",
            f"mean {_pct(sc['mean_abs_pct'])}, p95 {_pct(sc['p95_abs_pct'])} over "
            f"{sc['isps']} ISPs of {sc['groups']} subclusters",
        ),
        (
            "vs smart meters (all stations, per ISP)",
            f"{m['mape_pct_before']:.2f} % before, {m['mape_pct_after']:.2f} % after idle "
            f"correction (bias {m['bias_pct_before']:+.2f} % / {m['bias_pct_after']:+.2f} %)",
        ),
        (
            "shifted energy, median activation within 5 % (headline: per-session baseline)",
            f"**median absolute error {head['median_abs_err_pct']:.1f} %** over "
            f"{head['activations']} activations (median {head['median_err_pct']:+.1f} %; "
            f"{head['within_5_pct']:.0%} within 5 %; 90 % of activations within "
            f"{head['abs_quantiles_err_pct']['0.9']:.1f} %); total {head['total_kwh']:.0f} kWh "
            f"vs {sh['total_true_kwh']:.0f} kWh true",
        ),
        (
            "shifted energy, trapezoid (reference method)",
            f"median absolute error {sh['median_abs_err_pct']:.1f} % over "
            f"{sh['activations']} activations ({sh['within_5_pct']:.0%} within 5 %); "
            f"{sh['median_abs_err_pct_ge_5kwh']:.1f} % over the {sh['activations_ge_5kwh']} "
            f"with ≥ 5 kWh true shift; {sh['median_abs_err_pct_ge_10pct']:.1f} % over the "
            f"{sh['activations_ge_10pct']} that shifted ≥ 10 % of their counterfactual energy; "
            f"median signed error {sh['median_err_pct']:+.1f} %; "
            f"total {sh['total_est_kwh']:.0f} kWh measured vs "
            f"{sh['total_true_kwh']:.0f} kWh true",
        ),
        (
            "shifted energy, plain aggregate trapezoid (`split_stopped=False`)",
            f"median absolute error {sh['plain_median_abs_err_pct']:.1f} % (median "
            f"{sh['plain_median_err_pct']:+.1f} %; {sh['plain_within_5_pct']:.0%} within 5 %)",
        ),
        (
            "cross-check: sessions held at their pre-signal power (`hold_shifted_kwh`)",
            f"median absolute error {sh['hold_median_abs_err_pct']:.1f} % (median "
            f"{sh['hold_median_err_pct']:+.1f} %; {sh['hold_within_5_pct']:.0%} within 5 %)",
        ),
        (
            "shifted energy, per-session plan baseline (`plan_shifted`)",
            f"median absolute error {sh['plan_median_abs_err_pct']:.1f} % over "
            f"{sh['activations']} activations (median {sh['plan_median_err_pct']:+.1f} %; "
            f"{sh['plan_within_5_pct']:.0%} within 5 %); "
            f"{sh['plan_median_abs_err_pct_ge_10pct']:.1f} % over the "
            f"{sh['activations_ge_10pct']} that shifted ≥ 10 %; total "
            f"{sh['total_plan_kwh']:.0f} kWh vs {sh['total_true_kwh']:.0f} kWh true",
        ),
        (
            "plan baseline with the end-of-charge taper (`taper_kwh=1.5`)",
            f"median absolute error {sh['taper_median_abs_err_pct']:.1f} % (median "
            f"{sh['taper_median_err_pct']:+.1f} %; {sh['taper_within_5_pct']:.0%} within 5 %)",
        ),
        (
            "non-responding found ≥ 95 %, < 5 % false positives",
            f"{nr['found_visible']} of {nr['visible']} visibly misbehaving stations found "
            f"({(nr['recall_visible'] or 0):.0%}; {nr['injected']} injected); "
            f"{nr['false_positives']} false positives ({nr['fp_share_of_flagged']:.1%} of "
            f"flagged, {nr['fp_rate_of_good_stations']:.2%} of good stations)",
        ),
    ]
    table = "\n".join(f"| {t} | {v} |" for t, v in rows)
    days = len(args.seeds.split(","))
    return f"""## Measurement accuracy ({when})

Machine: {where}.
`python -m benchmarks.measurement --stations {args.stations} --seeds {args.seeds}`:
{s["sessions"]} sessions over {days} simulated days, greedy schedules.

| target | result |
|---|---|
{table}

Shifted-energy error quantiles (measured − true, relative to true): trapezoid {qs}; per-session
plan baseline {pq}.

Shifted energy by method, `err = (estimate − true) / true` over {head["activations"]} activations
(quantiles 10 / 25 / 50 / 75 / 90 %):

{METHOD_HEAD}
{method_rows}

Learned from the states per day: cars with a known maximum {
        ", ".join(f"{c['known_maximum']}/{c['sessions']}" for c in cars)
    }; fleet ratio {", ".join(f"{c['fleet_ratio']:.3f}" for c in cars)}; taper {
        ", ".join(f"{c['taper_kwh']:.2f} kWh to {c['taper_floor']:.0%}" for c in cars)
    } (without stated needs: {
        ", ".join(f"{c['taper_kwh_without_stated_needs']:.2f} kWh" for c in cars)
    }).

| error | activations (session baseline) | (trapezoid) | (plan baseline) |
|---|---:|---:|---:|
{hist_rows}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    days = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        d = one_day(args.stations, seed)
        print(
            f"seed {seed}: {d['sessions']} sessions, {d['activations']} activations, "
            f"simulated in {d['sim_s']:.1f} s, measured in {d['measure_s']:.1f} s",
            flush=True,
        )
        days.append(d)
    s = summarise(days)
    secs = time.perf_counter() - t0
    print(json.dumps({k: v for k, v in s.items() if k != "errors_pct"}, indent=1))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    md = to_markdown(s, args, when, where, secs)
    print(md)
    if args.no_write:
        return
    append_results(md, {"when": when, "machine": where, "measurement": s})
    doc = DOCS / "MEASUREMENT.md"
    if doc.exists():
        text = doc.read_text(encoding="utf-8")
        head, sep, _ = text.partition(MARKER)
        if sep:
            doc.write_text(head + MARKER + "\n\n" + md, encoding="utf-8")


if __name__ == "__main__":
    main()
