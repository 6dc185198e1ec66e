"""The demo: generate a Rotterdam-like network, schedule one day three ways, check, report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from optimizer.checker import check_schedule
from optimizer.network import Network, compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network


def plot_region_power(net: Network, schedules: dict[str, dict[str, Any]], path: Path) -> None:
    """Aggregate power per root node and method against the DSO cap and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roots = [nid for k, nid in enumerate(net.node_ids) if net.node_parent[k] < 0]
    fig, axes = plt.subplots(len(roots), 1, figsize=(10, 3.2 * len(roots)), squeeze=False)
    hours = np.arange(net.steps) * net.dt_h
    for ax, root in zip(axes[:, 0], roots, strict=True):
        for name, sch in schedules.items():
            ax.step(hours, sch["nodes"][root]["power_kw"], where="post", label=name)
        if root in net.cap_kw:
            ax.step(hours, net.cap_kw[root], where="post", color="k", ls="--", label="DSO cap")
        if root in net.target_nodes:
            tgt = net.target_kw[net.target_nodes.index(root)]
            ax.step(hours, tgt, where="post", color="grey", ls=":", label="DSO target")
        ax.set_title(f"{root}: aggregate charging power")
        ax.set_ylabel("kW")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel(f"hours after {net.grid.start.isoformat()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_station_currents(
    net: Network, schedule: dict[str, Any], path: Path, stations: int = 4
) -> None:
    """Per-session current of a few busy stations, with the station limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.bincount(net.session_station, minlength=len(net.station_ids))
    busiest = np.argsort(-counts, kind="stable")[:stations]
    fig, axes = plt.subplots(len(busiest), 1, figsize=(10, 2.4 * len(busiest)), squeeze=False)
    hours = np.arange(net.steps) * net.dt_h
    for ax, st in zip(axes[:, 0], busiest, strict=True):
        for s in np.nonzero(net.session_station == st)[0]:
            sid = net.session_ids[s]
            ax.step(hours, schedule["sessions"][sid]["current_a"], where="post", label=sid)
        ax.step(hours, net.station_limit_a[st], where="post", color="k", ls="--", label="limit")
        ax.axhline(net.min_a[net.session_station == st][0], color="r", lw=0.8, ls=":")
        ax.set_title(f"station {net.station_ids[st]} (lp)")
        ax.set_ylabel("A per phase")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


HTTP_DAY = date(2026, 11, 18)
"""The simulated service day: a past Wednesday (the service refuses states from the future)."""


def start_service(
    db_url: str, timeout_s: float = 60.0, background: bool = False, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """``gridcharge serve`` in its own process on a free loopback port; background loops off by
    default (the simulation decides when to re-plan)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "GRIDCHARGE_DATABASE_URL": db_url,
        "GRIDCHARGE_BACKGROUND": "true" if background else "false",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optimizer.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the service did not become ready")


def plot_compliance(
    compliance: dict[str, dict[str, Any]],
    path: Path,
    events: list[dict[str, Any]] | None = None,
    day_start: datetime | None = None,
) -> None:
    """Realised and planned aggregate power per region against the DSO cap and target; with
    ``events`` (demand response: ``at``, ``restore_at``, ``decision``) relayed activations are
    shaded and rejected signals marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(compliance), 1, figsize=(10, 3.4 * len(compliance)), squeeze=False)
    for ax, (region, comp) in zip(axes[:, 0], compliance.items(), strict=True):
        slots = comp["slots"]
        hours = np.arange(len(slots)) * 0.25

        def series(key: str, slots: list[dict[str, Any]] = slots) -> np.ndarray:
            return np.array([np.nan if s.get(key) is None else s[key] for s in slots], dtype=float)

        ax.step(hours, series("realised_kw"), where="post", label="realised (from meter states)")
        ax.step(hours, series("planned_kw"), where="post", ls="--", label="planned")
        ax.step(hours, series("cap_kw"), where="post", color="k", label="DSO cap")
        ax.step(hours, series("target_kw"), where="post", color="grey", ls=":", label="DSO target")
        for k, ev in enumerate(events or []):
            if day_start is None:
                break
            t0 = (ev["at"] - day_start).total_seconds() / 3600.0
            if ev["decision"] == "relay" and ev.get("restore_at") is not None:
                t1 = (ev["restore_at"] - day_start).total_seconds() / 3600.0
                ax.axvspan(
                    t0, t1, color="tab:red", alpha=0.25, label="DR relayed" if k == 0 else None
                )
            else:
                ax.axvline(t0, color="tab:purple", ls="-.", lw=1, label="DR rejected")
        ax.set_title(f"{region}: the simulated day through the service")
        ax.set_ylabel("kW")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("local hour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_dr_events(day_start: datetime) -> list[Any]:
    """The day's demand response: a full activation at 08:20 local, a partial one (20 kW) at
    13:05, and a signal the operator rejects at 17:10 (times on the 5-minute tick)."""
    from simulation.csms import DrEvent

    def local(h: int, m: int) -> datetime:
        return day_start + timedelta(hours=h, minutes=m)

    return [
        DrEvent(local(8, 20), "relay"),
        DrEvent(local(13, 5), "relay", target_kw=20.0),
        DrEvent(local(17, 10), "reject", reason="imbalance price below the drivers' cost"),
    ]


def run_http_day(out: Path, stations: int, seed: int, console: Console) -> dict[str, Any]:
    """Start the service on SQLite and drive a simulated day through HTTP (CSMS simulator)."""
    from api.db import make_engine, make_sessionmaker, migrate, transaction
    from api.security import create_key
    from simulation.csms import CsmsSimulator, served_share
    from simulation.fleet import generate_scenario

    db = out / "service.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db_url = f"sqlite:///{db}"
    raw = generate_scenario(stations=stations, seed=seed, date=HTTP_DAY)
    regions = [p["node"] for p in raw["dso_profiles"]]
    migrate(db_url)
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as session:
        keys = {r: create_key(session, r, label="demo") for r in ("csms", "operator")}
        keys["dso"] = create_key(session, "dso", regions, label="demo")
    engine.dispose()
    proc, url = start_service(db_url)
    t0 = time.perf_counter()
    events = demo_dr_events(datetime.fromisoformat(raw["grid"]["start"]).astimezone(UTC))
    sim = CsmsSimulator(url, keys, raw, dr_events=events)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task(f"HTTP day: {len(raw['sessions'])} sessions", total=1)
            result = sim.run_day(progress=lambda k, n: bar.update(task, completed=k, total=n))
        compliance = {
            r: sim.http.get(
                f"/v1/dso/{r}/compliance",
                params={"date": HTTP_DAY.isoformat()},
                headers={"Authorization": f"Token {keys['dso']}"},
            ).json()
            for r in regions
        }
        metrics = sim.http.get("/metrics").text
        op = {"Authorization": f"Token {keys['operator']}"}
        kpis = sim.http.get(f"/v1/demand-response/kpis/{HTTP_DAY.isoformat()}", headers=op).json()
    finally:
        sim.close()
        proc.terminate()
        proc.wait(20)
    dr_rows = []
    for ev in events:
        r = ev.result
        dr_rows.append(
            {
                "at": ev.at,
                "decision": ev.decision,
                "target_kw": ev.target_kw,
                "status": r.get("signal", {}).get("status"),
                "sessions_curtailed": r.get("sessions_curtailed", 0),
                "released_kw": r.get("released_kw", 0.0),
                "restore_at": (
                    datetime.fromisoformat(r["restore_at"].replace("Z", "+00:00"))
                    if r.get("restore_at")
                    else None
                ),
                "skipped": r.get("skipped", {}),
            }
        )
    plot_compliance(
        compliance,
        out / "service_day.png",
        events=dr_rows,
        day_start=datetime.fromisoformat(raw["grid"]["start"]).astimezone(UTC),
    )
    runs = result["runs"]
    summary = {
        "stations": stations,
        "sessions": result["sessions"],
        "http_calls": result["calls"],
        "meter_states": result["states"],
        "runs": len(runs),
        "runs_optimal": sum(r["status"] == "optimal" for r in runs),
        "runs_fallback": sum(r["status"] == "fallback" for r in runs),
        "runs_unpublished": sum(not r["published"] for r in runs),
        "served_share": round(served_share(sim.delivered()), 4),
        "energy_kwh": round(sum(d for d, _ in sim.delivered().values()), 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "compliance": {r: c.get("totals", {}) for r, c in compliance.items()},
        "metrics_lines": len(metrics.splitlines()),
        "demand_response": [
            {
                **row,
                "at": row["at"].isoformat(),
                "restore_at": row["restore_at"].isoformat() if row["restore_at"] else None,
            }
            for row in dr_rows
        ],
        "dr_kpis": kpis,
    }
    (out / "service_day.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_demo(out: Path, stations: int, seed: int, console: Console, http_stations: int = 0) -> int:
    """Run the demo; returns 0 when lp and greedy pass the checker, 1 otherwise."""
    from optimizer.cli import summary_table
    from simulation.fleet import generate_scenario

    out.mkdir(parents=True, exist_ok=True)
    schedules: dict[str, dict[str, Any]] = {}
    checks: dict[str, int] = {}
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("generating network", total=8)
        raw = generate_scenario(stations=stations, seed=seed)
        (out / "scenario.json").write_text(json.dumps(raw))
        net = compile_network(parse_scenario(raw))
        bar.advance(task)
        for method in ("uncontrolled", "greedy", "lp"):
            bar.update(task, description=f"scheduling: {method}")
            schedules[method] = solve_network(net, method)
            bar.advance(task)
        for method, sch in schedules.items():
            bar.update(task, description=f"checking: {method}")
            (out / f"schedule-{method}.json").write_text(json.dumps(sch))
            checks[method] = len(check_schedule(raw, sch))
            bar.advance(task)
        bar.update(task, description="plotting")
        plot_region_power(net, schedules, out / "region_power.png")
        plot_station_currents(net, schedules["lp"], out / "station_currents.png")
        bar.advance(task)
    console.print(summary_table(schedules, title=f"{stations} stations, {net.n_sessions} sessions"))
    for method, n in checks.items():
        verdict = "every limit holds" if n == 0 else f"{n} limit violations found"
        console.print(f"checker, {method}: {verdict}")
    lines = [
        f"# gridcharge demo: {stations} stations, {net.n_sessions} sessions (seed {seed})",
        "",
        "| method | status | delivered kWh | unmet kWh | fully served | checker |",
        "|---|---|---|---|---|---|",
    ]
    for method, sch in schedules.items():
        k = sch["kpis"]
        lines.append(
            f"| {method} | {sch['status']} | {k['energy_delivered_kwh']:.1f} | "
            f"{k['unmet_kwh']:.1f} | {100 * k['sessions_fully_served']:.1f} % | "
            f"{checks[method]} violations |"
        )
    lines += ["", "![region power](region_power.png)", "", "![stations](station_currents.png)"]
    day_ok = True
    if http_stations > 0:
        day = run_http_day(out, http_stations, seed, console)
        mins = day["dr_kpis"].get("curtailment_min_per_curtailed_session", {})
        day_ok = day["runs_unpublished"] == 0
        console.print(
            f"service day ({http_stations} stations, through HTTP): {day['sessions']} sessions, "
            f"{day['meter_states']:,} meter states, {day['http_calls']:,} calls, {day['runs']} "
            f"re-plans ({day['runs_fallback']} fallback, {day['runs_unpublished']} unpublished), "
            f"{100 * day['served_share']:.1f} % fully served, {day['seconds']} s"
        )
        lines += [
            "",
            f"## The service through HTTP: {http_stations} stations, {HTTP_DAY.isoformat()}",
            "",
            "A CSMS simulator plugged cars in over OCPI 2.2.1, sent a meter state every 5 minutes "
            "per session on its own clock (currents following the profiles it received), the DSO "
            "posted its day profile, and the service re-planned every 15 minutes.",
            "",
            "| sessions | meter states | HTTP calls | re-plans | fallback | unpublished "
            "| fully served | energy kWh | s |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {day['sessions']} | {day['meter_states']:,} | {day['http_calls']:,} | "
            f"{day['runs']} | {day['runs_fallback']} | {day['runs_unpublished']} | "
            f"{100 * day['served_share']:.1f} % | {day['energy_kwh']:,.1f} | {day['seconds']} |",
            "",
            "Compliance with the DSO cap (realised from meter states): "
            + "; ".join(
                f"{r}: {t.get('slots_over_cap', '?')} slots over the cap, "
                f"{t.get('energy_over_cap_kwh', 0):.1f} kWh above it"
                for r, t in day["compliance"].items()
            ),
            "",
            "",
            "### Demand response during the day",
            "",
            "The supplier signalled three times; the operator relayed two signals (the second a "
            "partial activation with a target) and rejected one. Shaded in the plot: relayed "
            "activations until their restore; dash-dotted: the rejected signal.",
            "",
            "| signal (UTC) | decision | target kW | sessions curtailed | released kW | restore "
            "(UTC) | skipped |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {e['at'][11:16]} | {e['status']} | {e['target_kw'] or '-'} | "
                f"{e['sessions_curtailed']} | {e['released_kw']:.1f} | "
                f"{e['restore_at'][11:16] if e['restore_at'] else '-'} | "
                + ", ".join(f"{k} {v}" for k, v in e["skipped"].items() if v)
                + " |"
                for e in day["demand_response"]
            ],
            "",
            "Driver impact that day: "
            + (
                f"{100 * (day['dr_kpis'].get('never_curtailed_share') or 0):.1f} % of sessions "
                f"never curtailed; curtailed sessions lost "
                f"{mins['mean']:.1f} min on average (max {mins['max']:.1f})."
                if "curtailment_min_per_curtailed_session" in day["dr_kpis"]
                else "not available."
            ),
            "",
            "![service day](service_day.png)",
        ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    console.print(f"report written to {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0 if checks["lp"] == 0 and checks["greedy"] == 0 and day_ok else 1
