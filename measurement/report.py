"""The measurement report: every figure of one run of ``gridcharge measure`` as JSON, CSV,
a README and PNG plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from measurement.flexibility import erasable_by_hour, fleet_power, non_responding
from measurement.reconstruct import (
    ISP_S,
    Reconstruction,
    compare_meters,
    group_isp_energy,
    isp_edges_s,
    reconstruct,
    station_isp_energy,
)
from measurement.shifted import (
    ActivationResult,
    CarModel,
    Plan,
    estimate_cars,
    iso,
    measure_activations,
)


@dataclass
class Report:
    """Everything measured from one set of inputs."""

    rec: Reconstruction
    activations: list[ActivationResult]
    evidence: pd.DataFrame
    stations: pd.DataFrame
    power: pd.DataFrame
    erasable: pd.DataFrame
    meters: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    cars: CarModel | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``report.json`` holds)."""
        shifted = [a.shifted_kwh for a in self.activations]
        out: dict[str, Any] = {
            "format": "gridcharge.measurement/1",
            "sessions": self.rec.n_sessions,
            "states": self.counts,
            "interval_models": self.rec.models,
            "activations": [a.to_dict() for a in self.activations],
            "baseline": self.baseline_summary(),
            "totals": {
                "shifted_kwh": round(float(np.sum(shifted)), 6),
                "value_eur": round(float(np.nansum([a.value_eur for a in self.activations])), 2),
                "trapezoid_shifted_kwh": round(
                    float(np.sum([a.trapezoid_shifted_kwh for a in self.activations])), 6
                ),
            },
            "non_responding": {
                "findings": len(self.evidence),
                "stations": self.stations.to_dict(orient="records"),
            },
            "erasable_by_hour": [
                {"hour": int(h), **{k: _num(v) for k, v in row.items()}}
                for h, row in self.erasable.iterrows()
            ],
        }
        if self.meters is not None:
            out["meters"] = {k: _num(v) for k, v in self.meters.items() if k != "isp"}
        return out

    def baseline_summary(self) -> dict[str, Any]:
        """Which baseline the headline uses and what was learned about the cars."""
        if self.cars is None:
            return {"method": "trapezoid"}
        c = self.cars
        return {
            "method": "session",
            "cars_with_known_maximum": int(c.known.sum()),
            "cars": int(c.known.size),
            "fleet_ratio": _num(c.fleet_ratio),
            "sessions_with_need": int(np.isfinite(c.need_kwh).sum()),
            "taper_kwh": round(c.taper_kwh, 4),
            "taper_floor": round(c.taper_floor, 4) if c.taper_kwh > 0 else None,
        }


def _num(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return None if not np.isfinite(v) else round(float(v), 6)
    if isinstance(v, np.integer):
        return int(v)
    return v


def build_report(
    states: pd.DataFrame,
    activations: pd.DataFrame,
    meters: pd.DataFrame | None = None,
    prices: pd.DataFrame | None = None,
    tz: str = "UTC",
    profiles: Plan | None = None,
) -> Report:
    """Reconstruct, measure every activation, find non-responding chargers, compare with the
    meters (when given) and build the erasable-power curve.

    Parameters are the frames of :mod:`measurement.io`; ``tz`` names the time zone of the
    hour-of-day curve. With ``profiles`` (:func:`measurement.io.load_profiles`) the headline
    shifted energy and value use the per-session plan baseline with each car's own maximum,
    need and the fleet's taper learned from the states (:func:`estimate_cars`); the trapezoid
    stays in ``trapezoid_*``.
    """
    from measurement.reconstruct import clean_states

    _, counts = clean_states(states)
    counts["rows"] = len(states)
    breaks = np.r_[activations["t_signal_s"].to_numpy(), activations["t_clear_s"].to_numpy()]
    rec = reconstruct(states, breaks)
    cars = estimate_cars(states, rec, activations, profiles) if profiles is not None else None
    results = measure_activations(rec, activations, prices, plan=profiles, cars=cars)
    evidence, stations = non_responding(states, rec, activations)
    lo = np.floor(rec.first_s.min() / 60.0) * 60.0
    hi = np.ceil(rec.last_s.max() / 60.0) * 60.0
    power = fleet_power(rec, lo, max(hi, lo + 60.0))
    meter_cmp = None
    if meters is not None and not meters.empty:
        edges = isp_edges_s(float(meters["start_s"].min()), float(meters["start_s"].max()) + ISP_S)
        meter_cmp = compare_meters(meters, station_isp_energy(rec, edges))
    return Report(
        rec=rec,
        activations=results,
        evidence=evidence,
        stations=stations,
        power=power,
        erasable=erasable_by_hour(power, tz),
        meters=meter_cmp,
        counts=counts,
        cars=cars,
    )


def write_report(report: Report, out: Path) -> list[Path]:
    """Write ``report.json``, CSV tables, PNG plots and ``README.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)

    summary = report.summary()
    put("report.json", json.dumps(summary, indent=1) + "\n")
    act = pd.DataFrame([a.to_dict() for a in report.activations]).drop(columns=["segments"])
    put("activations.csv", act.to_csv(index=False))
    put("non_responding.csv", report.evidence.to_csv(index=False))
    put("non_responding_stations.csv", report.stations.to_csv(index=False))
    put("erasable_by_hour.csv", report.erasable.to_csv())
    fp = report.power.copy()
    fp.index = [iso(t) for t in fp.index]
    fp.index.name = "start"
    put("fleet_power.csv", fp.round(4).to_csv())
    rec = report.rec
    edges = isp_edges_s(float(rec.first_s.min()), float(rec.last_s.max()))
    for by in ("subcluster", "region"):
        if (rec.__getattribute__(by) != "").any():
            g = group_isp_energy(rec, edges, by)
            g.insert(0, "start", [iso(t) for t in g.pop("start_s")])
            put(f"isp_energy_by_{by}.csv", g.round(6).to_csv(index=False))
    if report.meters is not None:
        isp = report.meters["isp"].copy()
        isp.index = [iso(t) for t in isp.index]
        isp.index.name = "start"
        put("meters_vs_reconstructed.csv", isp.round(6).to_csv())
    written += plot_report(report, out)
    put("README.md", readme(report, summary))
    return written


def plot_report(report: Report, out: Path) -> list[Path]:
    """The PNG plots: meter vs reconstructed energy, power around each activation with the
    baseline trapezoid shaded, actual vs theoretical minimum, erasable power by hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if report.meters is not None:
        isp = report.meters["isp"]
        t = pd.to_datetime(isp.index.to_numpy(float), unit="s", utc=True)
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.step(t, isp["meter_kwh"], where="post", label="smart meters", lw=1.5)
        ax.step(t, isp["reconstructed_kwh"], where="post", label="reconstructed", lw=1)
        ax.step(t, isp["corrected_kwh"], where="post", label="reconstructed + idle", lw=1, ls="--")
        ax.set_ylabel("energy per ISP [kWh]")
        ax.set_xlabel("UTC")
        ax.legend()
        ax.set_title("Meter vs reconstructed energy per 15 minutes")
        save(fig, "meter_vs_reconstructed.png")

    plot_dir = out / "activations"
    plot_dir.mkdir(exist_ok=True)
    for a in report.activations:
        s = a.series
        edges = s["edges_s"]
        mins = (edges[:-1] - a.t_signal_s) / 60.0
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.step(mins, s["p_kw"], where="post", label="reconstructed power, all of S")
        if a.stopped_sessions:
            ax.step(mins, s["p_cont_kw"], where="post", lw=0.8, label="sessions charging on (S_c)")
        ax.step(mins, s["p_min_kw"], where="post", label="theoretical minimum", ls=":")
        dur = (a.t_clear_s - a.t_signal_s) / 60.0
        ax.fill(
            [0, 0, dur, dur],
            [0, a.p_signal_kw, a.p_clear_kw, 0],
            alpha=0.2,
            color="tab:green",
            label=f"baseline trapezoid of S_c (+{a.stopped_baseline_kwh:.1f} kWh stopped)",
        )
        if "p_base_kw" in s:
            b_edges = s["base_edges_s"]
            ax.stairs(
                s["p_base_kw"],
                (b_edges - a.t_signal_s) / 60.0,
                baseline=None,
                color="tab:purple",
                lw=1.5,
                label="per-session plan baseline (headline)",
            )
        ax.axvline((a.t_recovery_s - a.t_signal_s) / 60.0, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("minutes from signal")
        ax.set_ylabel("power [kW]")
        ax.set_title(f"{a.id}: shifted {a.shifted_kwh:.1f} kWh ({a.sessions} sessions)")
        ax.legend(fontsize=8)
        save(fig, f"activations/{_safe(a.id)}.png")

    p = report.power
    t = pd.to_datetime(p.index.to_numpy(float), unit="s", utc=True)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, p["p_kw"], label="actual", lw=1)
    ax.plot(t, p["p_min_kw"], label="theoretical minimum", lw=1)
    for a in report.activations:
        ax.axvspan(
            pd.Timestamp(a.t_signal_s, unit="s", tz="UTC"),
            pd.Timestamp(a.t_clear_s, unit="s", tz="UTC"),
            color="tab:red",
            alpha=0.15,
        )
    ax.set_ylabel("power [kW]")
    ax.set_xlabel("UTC (activations shaded)")
    ax.legend()
    ax.set_title("Actual vs theoretical minimum power")
    save(fig, "actual_vs_theoretical_minimum.png")

    e = report.erasable
    fig, ax = plt.subplots(figsize=(8, 4))
    hours = e.index.to_numpy()
    ax.bar(hours, e["mean_kw"].fillna(0), color="tab:blue", alpha=0.7, label="mean")
    ax.errorbar(
        hours,
        e["p50_kw"].fillna(0),
        yerr=[
            (e["p50_kw"] - e["p10_kw"]).fillna(0),
            (e["p90_kw"] - e["p50_kw"]).fillna(0),
        ],
        fmt="o",
        color="black",
        ms=3,
        label="median, 10-90 %",
    )
    ax.set_xlabel("hour of day")
    ax.set_ylabel("erasable power [kW]")
    ax.set_xticks(range(0, 24, 2))
    ax.legend()
    ax.set_title("Erasable power by hour of day")
    save(fig, "erasable_by_hour.png")
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "activation"


def _method_text(report: Report) -> str:
    b = report.baseline_summary()
    if b["method"] == "trapezoid":
        return (
            "the aggregate trapezoid (no profiles given; `--profiles` gives the per-session "
            "plan baseline)."
        )
    taper = (
        f"an end-of-charge taper over the last {b['taper_kwh']:.2f} kWh down to "
        f"{b['taper_floor']:.0%}"
        if b["taper_kwh"] > 0
        else "no end-of-charge taper (none seen)"
    )
    ratio = "n/a" if b["fleet_ratio"] is None else f"{b['fleet_ratio']:.3f}"
    return (
        "the per-session plan baseline (the published profiles, each car's own maximum: "
        f"known for {b['cars_with_known_maximum']} of {b['cars']} sessions, fleet ratio "
        f"{ratio} for the others; {b['sessions_with_need']} sessions with a known need; "
        f"{taper}). The trapezoid is the last column."
    )


def readme(report: Report, summary: dict[str, Any]) -> str:
    """A human-readable summary with the tables and plots."""
    lines = [
        "# Measurement report",
        "",
        f"{report.rec.n_sessions} sessions, {report.counts.get('rows', 0)} states "
        f"({report.counts.get('duplicates', 0)} duplicates dropped, "
        f"{report.counts.get('raised', 0)} decreasing energies raised).",
        "",
        "## Activations",
        "",
        f"Baseline: {_method_text(report)}",
        "",
        "| id | signal | clear | sessions | baseline kWh | delivered kWh | shifted kWh "
        "| performance | value EUR | trapezoid shifted kWh |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in report.activations:
        ratio = "n/a" if not np.isfinite(a.performance_ratio) else f"{a.performance_ratio:.2f}"
        value = "n/a" if not np.isfinite(a.value_eur) else f"{a.value_eur:.2f}"
        lines.append(
            f"| {a.id} | {iso(a.t_signal_s)} | {iso(a.t_clear_s)} | {a.sessions} "
            f"| {a.baseline_kwh:.2f} | {a.delivered_kwh:.2f} | {a.shifted_kwh:.2f} | {ratio} "
            f"| {value} | {a.trapezoid_shifted_kwh:.2f} |"
        )
    lines += [
        "",
        f"Total shifted: {summary['totals']['shifted_kwh']:.2f} kWh, "
        f"value {summary['totals']['value_eur']:.2f} EUR. "
        "Plots: `activations/<id>.png` (baseline trapezoid shaded).",
        "",
    ]
    if report.meters is not None:
        m = report.meters
        lines += [
            "## Smart meters",
            "",
            f"Idle consumption {1000 * float(m['idle_kw']):.1f} W per station (median). "
            f"Error per ISP vs the meters: {float(m['mape_pct_before']):.2f} % before, "
            f"{float(m['mape_pct_after']):.2f} % after idle correction "
            f"(bias {float(m['bias_pct_before']):+.2f} % / {float(m['bias_pct_after']):+.2f} %). "
            "Plot: `meter_vs_reconstructed.png`.",
            "",
        ]
    lines += [
        "## Non-responding chargers",
        "",
        f"{len(report.evidence)} findings at {len(report.stations)} stations "
        "(`non_responding.csv` has the evidence, `non_responding_stations.csv` the stations).",
        "",
    ]
    for row in report.stations.head(20).itertuples(index=False):
        lines.append(
            f"- {row.station}: {row.findings} findings, {row.sessions} sessions, {row.kinds}"
        )
    lines += [
        "",
        "## Flexibility",
        "",
        "`actual_vs_theoretical_minimum.png`, `erasable_by_hour.png` and `erasable_by_hour.csv`.",
        "",
    ]
    return "\n".join(lines)
