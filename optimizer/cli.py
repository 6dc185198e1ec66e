"""The ``gridcharge`` command line (typer).

Bad input ends with exit code 2 and one readable line on stderr naming the field and value.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date as date_cls
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from forecasting.cli import forecast_app
from optimizer.errors import GridchargeError, ScenarioError
from optimizer.scenario import load_scenario, scenario_json_schema
from optimizer.solve import METHODS, solve_network

app = typer.Typer(
    help="gridcharge: grid-aware EV charging schedules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
scenario_app = typer.Typer(help="Scenario files.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(forecast_app, name="forecast")  # forecasting/cli.py

console = Console()
err_console = Console(stderr=True)

PROFILE_FORMATS = ("ocpp16", "ocpp201", "ocpi")


def fail(message: str) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned exit (code 2)."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)  # never leave a half-written file behind


def summary_table(schedules: dict[str, dict[str, Any]], title: str = "Schedule") -> Table:
    """Energy, unmet energy, peak vs DSO cap, violations and time; one column per schedule.

    ``cap use`` is the highest ratio of aggregate power to the DSO cap over all capped nodes
    and steps (100 % = the cap binds; above = exceeded).
    """
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("")
    for name in schedules:
        table.add_column(name, justify="right", no_wrap=True)

    def row(label: str, fmt: Any) -> None:
        table.add_row(label, *(fmt(s["kpis"], s) for s in schedules.values()))

    def cap_use(k: dict[str, Any]) -> str:
        use = max(k.get("cap_use_max", {}).values(), default=None)
        return "—" if use is None else f"{100 * use:.1f} %"

    row("status", lambda k, s: s["status"])
    row("delivered kWh", lambda k, s: f"{k['energy_delivered_kwh']:,.1f}")
    row("unmet kWh", lambda k, s: f"{k['unmet_kwh']:,.1f}")
    row("fully served", lambda k, s: f"{100 * k['sessions_fully_served']:.1f} %")
    row("peak kW", lambda k, s: f"{sum(k['peak_kw'].values()):,.0f}")
    row("max power / DSO cap", lambda k, s: cap_use(k))
    row("violations", lambda k, s: str(k["violations"]))
    row("time s", lambda k, s: f"{s['solver'].get('time_s') or 0:.2f}")
    return table


def _parse_profiles(profiles: str | None) -> list[str]:
    if not profiles:
        return []
    wanted = [p.strip() for p in profiles.split(",") if p.strip()]
    for p in wanted:
        if p not in PROFILE_FORMATS:
            raise fail(f"--profiles: unknown profile format {p!r} (choose from {PROFILE_FORMATS})")
    return wanted


@app.command()
def schedule(
    scenario: Annotated[Path, typer.Argument(help="Scenario JSON file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Schedule JSON to write.")] = Path(
        "schedule.json"
    ),
    method: Annotated[str, typer.Option(help="lp | milp | greedy | uncontrolled")] = "lp",
    profiles: Annotated[
        str | None, typer.Option(help="Comma list of ocpp16,ocpp201,ocpi to attach.")
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="Solver budget [s].")
    ] = None,
    backend: Annotated[str, typer.Option(help="highs (direct twin) | pyomo")] = "highs",
    workers: Annotated[
        int | None,
        typer.Option(help="Independent parts (DSO regions) solved at once [default: cores]."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler tcp://HOST:PORT to solve the parts on a cluster."),
    ] = None,
) -> None:
    """Schedule a scenario and write the schedule file."""
    if method not in METHODS:
        raise fail(f"--method: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if backend not in ("highs", "pyomo"):
        raise fail(f"--backend: unknown backend {backend!r} (choose from highs, pyomo)")
    if time_limit is not None and not time_limit > 0:
        raise fail(f"--time-limit: must be > 0 (got {time_limit})")
    if workers is not None and workers < 1:
        raise fail(f"--workers: must be at least 1 (got {workers})")
    if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://")):
        raise fail(f"--scheduler: expected tcp://HOST:PORT (got {scheduler!r})")
    formats = _parse_profiles(profiles)
    from optimizer.network import compile_network

    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    net = compile_network(sc)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{method}: {net.n_sessions} sessions × {net.steps} steps")
        try:
            result = solve_network(
                net,
                method,
                backend=backend,
                time_limit_s=time_limit,
                progress=lambda msg: bar.update(task, description=f"{method}: {msg}"),
                workers=workers,
                scheduler=scheduler,
            )
        except OSError as exc:  # the Dask scheduler cannot be reached
            raise fail(f"--scheduler: {exc}") from None
    if formats:
        from optimizer.emit import attach_profiles
        from optimizer.profiles import ProfileError

        try:
            attach_profiles(net, result, formats)
        except ProfileError as exc:
            raise fail(f"--profiles: {exc}") from None
    _write_json(output, result)
    console.print(summary_table({method: result}, title=f"{scenario.name} → {output}"))


@app.command()
def check(
    scenario: Annotated[Path, typer.Argument(help="Scenario JSON file.")],
    schedule_file: Annotated[Path, typer.Argument(metavar="SCHEDULE", help="Schedule JSON file.")],
) -> None:
    """Re-simulate a schedule independently: exit 0 when every limit holds, 1 otherwise."""
    from optimizer.checker import check_schedule

    data = []
    for label, path in (("scenario", scenario), ("schedule", schedule_file)):
        try:
            data.append(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise fail(f"{label}: cannot read {str(path)!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise fail(f"{label}: {str(path)!r} is not valid JSON ({exc.msg})") from None
    try:
        load_scenario(scenario)
        violations = check_schedule(data[0], data[1])
    except (ScenarioError, GridchargeError) as exc:
        raise fail(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"schedule: malformed ({exc})") from None
    if not violations:
        console.print("[green]ok[/green]: every limit holds")
        raise typer.Exit(0)
    table = Table(title=f"{len(violations)} violations")
    for col in ("kind", "subject", "step", "amount", "unit"):
        table.add_column(col)
    for v in violations[:200]:
        table.add_row(v.kind, v.subject, str(v.step), f"{v.amount:.4f}", v.unit)
    console.print(table)
    raise typer.Exit(1)


@app.command()
def schema(
    kind: Annotated[str, typer.Argument(help="scenario | schedule")] = "scenario",
) -> None:
    """Print the JSON Schema of the scenario or schedule file."""
    if kind == "scenario":
        sys.stdout.write(json.dumps(scenario_json_schema(), indent=2) + "\n")
    elif kind == "schedule":
        from optimizer.schemas import schedule_json_schema

        sys.stdout.write(json.dumps(schedule_json_schema(), indent=2) + "\n")
    else:
        raise fail(f"kind: unknown schema {kind!r} (choose from scenario, schedule)")


@scenario_app.command("generate")
def scenario_generate(
    stations: Annotated[int, typer.Option(help="Number of two-connector stations.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 1,
    date: Annotated[str | None, typer.Option(help="Day to simulate, YYYY-MM-DD.")] = None,
    dso_scale: Annotated[
        float, typer.Option("--dso-scale", help="DSO cap as a share of the uncontrolled peak.")
    ] = 0.6,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("scenario.json"),
) -> None:
    """Generate a Rotterdam-like network and one day of Dutch public-charging sessions."""
    from simulation.fleet import generate_scenario

    if stations < 1:
        raise fail(f"--stations: must be >= 1 (got {stations})")
    if not 0 < dso_scale <= 10:
        raise fail(f"--dso-scale: must be in (0, 10] (got {dso_scale})")
    day = None
    if date is not None:
        try:
            day = date_cls.fromisoformat(date)
        except ValueError:
            raise fail(f"--date: not a YYYY-MM-DD date (got {date!r})") from None
    t0 = time.perf_counter()
    sc = generate_scenario(stations=stations, seed=seed, date=day, dso_scale=dso_scale)
    _write_json(output, sc)
    console.print(
        f"wrote {output}: {len(sc['stations'])} stations, {len(sc['sessions'])} sessions, "
        f"{len(sc['nodes'])} nodes in {time.perf_counter() - t0:.1f} s"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("report"),
    stations: Annotated[int, typer.Option(help="Stations in the generated network.")] = 1000,
    seed: Annotated[int, typer.Option()] = 1,
    http_stations: Annotated[
        int, typer.Option(help="Stations in the day driven through the service (0: skip).")
    ] = 300,
) -> None:
    """Generate a network, schedule a day with lp, uncontrolled and greedy, check all three;
    then start the service on SQLite and drive a simulated day through HTTP; write a report."""
    from optimizer.demo import run_demo

    code = run_demo(
        out=out, stations=stations, seed=seed, console=console, http_stations=http_stations
    )
    raise typer.Exit(code)


@app.command()
def measure(
    states: Annotated[
        Path, typer.Option(help="Meter states (CSV or JSON), see docs/MEASUREMENT.md.")
    ],
    activations: Annotated[
        Path, typer.Option(help="Activation log: id, t_signal, t_clear, region, price.")
    ],
    meters: Annotated[
        Path | None, typer.Option(help="Station smart-meter energy per ISP (CSV or JSON).")
    ] = None,
    prices: Annotated[Path | None, typer.Option(help="Imbalance price per ISP.")] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            help="Profiles sent to each session (session_id, start, limit_a[, end]) or a "
            "gridcharge schedule JSON: the headline then uses the per-session plan baseline."
        ),
    ] = None,
    tz: Annotated[
        str, typer.Option(help="Time zone of the hour-of-day curve.")
    ] = "Europe/Amsterdam",
    output: Annotated[Path, typer.Option("-o", "--output", help="Report directory.")] = Path(
        "report"
    ),
) -> None:
    """Measure shifted energy per activation, non-responding chargers and the erasable-power
    curve from OCPI meter states; write a report (README, JSON, CSV, PNG plots)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from measurement.io import (
        load_activations,
        load_meters,
        load_prices,
        load_profiles,
        load_states,
    )
    from measurement.report import build_report, write_report

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"--tz: unknown time zone (got {tz!r})") from None
    try:
        st = load_states(states)
        act = load_activations(activations)
        met = load_meters(meters) if meters is not None else None
        pri = load_prices(prices) if prices is not None else None
        plan = load_profiles(profiles) if profiles is not None else None
        report = build_report(st, act, met, pri, tz=tz, profiles=plan)
    except GridchargeError as exc:
        raise fail(str(exc)) from None
    write_report(report, output)
    method = "per-session plan baseline" if plan is not None else "trapezoid"
    table = Table(
        title=f"Activations, kWh and EUR (baseline: {method})",
        box=box.SIMPLE,
        padding=(0, 1),
        pad_edge=False,
    )
    cols = ("id", "sessions", "baseline", "delivered", "shifted", "EUR")
    for col in cols + (("trapezoid",) if plan is not None else ()):
        table.add_column(col, justify="left" if col == "id" else "right", no_wrap=col == "id")
    for a in report.activations:
        row = [
            a.id,
            str(a.sessions),
            f"{a.baseline_kwh:.2f}",
            f"{a.delivered_kwh:.2f}",
            f"{a.shifted_kwh:.2f}",
            "n/a" if a.value_eur != a.value_eur else f"{a.value_eur:.2f}",
        ]
        if plan is not None:
            row.append(f"{a.trapezoid_shifted_kwh:.2f}")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"non-responding: {len(report.stations)} stations; report written to {output}/README.md"
    )


@app.command("simulate-day")
def simulate_day_cmd(
    stations: Annotated[int, typer.Option(help="Number of two-connector stations.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 1,
    method: Annotated[str, typer.Option(help="Schedule method: greedy or lp.")] = "greedy",
    misbehaving: Annotated[
        float, typer.Option(help="Share of stations injected as misbehaving.")
    ] = 0.03,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the files.")] = Path(
        "simulated-day"
    ),
) -> None:
    """Simulate a day with demand-response activations and write the files `gridcharge
    measure` reads (states, activations, meters, prices, profiles) plus the ground truth."""
    from optimizer.network import compile_network
    from optimizer.scenario import parse_scenario
    from simulation.fleet import generate_scenario
    from simulation.truth import plan_activations, profiles_table, simulate_day

    if stations < 1:
        raise fail(f"--stations: must be >= 1 (got {stations})")
    if method not in ("greedy", "lp"):
        raise fail(f"--method: must be greedy or lp (got {method!r})")
    if not 0.0 <= misbehaving <= 1.0:
        raise fail(f"--misbehaving: must be within [0, 1] (got {misbehaving})")
    sc = generate_scenario(stations=stations, seed=seed)
    schedule = solve_network(compile_network(parse_scenario(sc)), method)
    day = simulate_day(sc, schedule, plan_activations(sc, seed), seed, misbehaving)
    paths = day.write(output)
    paths["profiles"] = output / "profiles.csv"
    profiles_table(schedule).to_csv(paths["profiles"], index=False)
    console.print(
        f"wrote {', '.join(p.name for p in paths.values())} to {output}: "
        f"{len(day.session_ids)} sessions, {len(day.states)} states, "
        f"{len(day.activations)} activations"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Start the scheduling service (settings from GRIDCHARGE_* environment variables)."""
    import uvicorn

    if not 0 < port < 65536:
        raise fail(f"--port: must be 1..65535 (got {port})")
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=workers)


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="csms | dso | operator | data-scientist | brp | admin")],
    region: Annotated[
        list[str] | None, typer.Option(help="Region a dso key may act on (repeatable).")
    ] = None,
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    from api.db import make_engine, make_sessionmaker, migrate, transaction
    from api.security import create_key
    from api.settings import get_settings

    url = get_settings().database_url
    migrate(url)
    engine = make_engine(url)
    try:
        with transaction(make_sessionmaker(engine)) as db:
            key = create_key(db, role, list(region or []), label)
    except ValueError as exc:
        raise fail(str(exc).replace("role:", "--role:").replace("region:", "--region:")) from None
    finally:
        engine.dispose()
    sys.stdout.write(key + "\n")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
