"""The demo: generate a Rotterdam-like network, schedule one day three ways, check, report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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


def run_demo(out: Path, stations: int, seed: int, console: Console) -> int:
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
    (out / "README.md").write_text("\n".join(lines) + "\n")
    console.print(f"report written to {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0 if checks["lp"] == 0 and checks["greedy"] == 0 else 1
