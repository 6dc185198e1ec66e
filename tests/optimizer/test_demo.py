"""The demo end to end on a small network, and the scenario generator's command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from optimizer.checker import check_schedule
from optimizer.cli import app
from optimizer.demo import run_demo

runner = CliRunner()


def test_demo_writes_report_and_passes_the_checker(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = run_demo(out=out, stations=60, seed=2, console=Console(file=io.StringIO()))
    assert code == 0
    for name in ("README.md", "region_power.png", "station_currents.png", "scenario.json"):
        assert (out / name).stat().st_size > 0, name
    raw = json.loads((out / "scenario.json").read_text())
    lp = json.loads((out / "schedule-lp.json").read_text())
    unc = json.loads((out / "schedule-uncontrolled.json").read_text())
    assert check_schedule(raw, lp) == []
    # uncontrolled charging ignores the DSO cap, the optimiser keeps it
    assert unc["kpis"]["cap_use_max"]["region-01"] > 1.0
    assert lp["kpis"]["cap_use_max"]["region-01"] <= 1.0 + 1e-6
    assert "| lp | optimal |" in (out / "README.md").read_text()


def test_generate_cli(tmp_path: Path) -> None:
    out = tmp_path / "sc.json"
    res = runner.invoke(
        app, ["scenario", "generate", "--stations", "30", "--seed", "4", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["format"] == "gridcharge.scenario/1"
    for args, needle in (
        (["--date", "25-11-2026"], "--date"),
        (["--stations", "0"], "--stations"),
        (["--dso-scale", "-1"], "--dso-scale"),
    ):
        res = runner.invoke(app, ["scenario", "generate", *args, "-o", str(tmp_path / "x.json")])
        assert res.exit_code == 2 and needle in res.stderr, res.stderr
        assert not (tmp_path / "x.json").exists()


def test_http_day_drives_the_real_service(tmp_path: Path) -> None:
    """A small simulated day through the real server: every state stored, every run published,
    and the realised power reconstructed from the states equals what the simulator delivered."""
    import sqlalchemy as sa

    from optimizer.demo import run_http_day

    out = tmp_path / "report"
    out.mkdir()
    day = run_http_day(out, stations=12, seed=3, console=Console(file=io.StringIO()))
    assert day["sessions"] > 20 and day["meter_states"] > 500
    assert day["runs_unpublished"] == 0 and day["runs"] >= 96
    assert (out / "service_day.png").stat().st_size > 0
    engine = sa.create_engine(f"sqlite:///{out / 'service.db'}")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM session_states")).scalar()
        ended = conn.execute(
            sa.text("SELECT count(*) FROM sessions WHERE status = 'COMPLETED'")
        ).scalar()
    engine.dispose()
    # one state per PUT (plug-in) and per PATCH (departure), plus every 5-minute state
    assert stored is not None and stored >= day["meter_states"]
    assert ended is not None and ended > 0
    # demand response: two relayed activations and one rejected signal, in the summary
    dr_events = day["demand_response"]
    assert [e["status"] for e in dr_events] == ["relayed", "relayed", "rejected"]
    assert dr_events[0]["sessions_curtailed"] > 0 and dr_events[0]["released_kw"] > 0
    assert dr_events[0]["restore_at"] is not None and dr_events[2]["sessions_curtailed"] == 0
    assert day["dr_kpis"]["activations"] == 2
    realised = sum(t["realised_kwh"] for t in day["compliance"].values())
    assert (
        realised == day["energy_kwh"]
        or abs(realised - day["energy_kwh"]) < 0.05 * day["energy_kwh"]
    )
