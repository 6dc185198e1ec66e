"""The command line: exit codes, one-line errors, files written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optimizer.cli import app
from simulation.random_net import random_scenario

runner = CliRunner()


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    p = tmp_path / "scenario.json"
    p.write_text(json.dumps(random_scenario(5, stations=3, steps=8)))
    return p


def test_schedule_then_check_ok(scenario_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "schedule.json"
    res = runner.invoke(
        app, ["schedule", str(scenario_file), "-o", str(out), "--profiles", "ocpp16,ocpi"]
    )
    assert res.exit_code == 0, res.output
    sch = json.loads(out.read_text())
    assert sch["format"] == "gridcharge.schedule/1"
    assert set(next(iter(sch["profiles"].values()))) == {"ocpp16", "ocpi"}
    res = runner.invoke(app, ["check", str(scenario_file), str(out)])
    expected = 0 if not sch["violations"] else 1
    assert res.exit_code == expected, res.output


def test_check_fails_with_list_on_a_broken_schedule(scenario_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "schedule.json"
    assert runner.invoke(app, ["schedule", str(scenario_file), "-o", str(out)]).exit_code == 0
    sch = json.loads(out.read_text())
    sid = next(s for s, v in sch["sessions"].items() if any(v["current_a"]))
    sch["sessions"][sid]["current_a"] = [99.0] * len(sch["sessions"][sid]["current_a"])
    out.write_text(json.dumps(sch))
    res = runner.invoke(app, ["check", str(scenario_file), str(out)])
    assert res.exit_code == 1
    assert "connector_limit" in res.output


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda sc: sc["sessions"][0].update(connector="ghost"), "sessions[0].connector"),
        (lambda sc: sc["sessions"][0].update(energy_kwh=-1), "sessions[0].energy_kwh"),
        (lambda sc: sc["nodes"][0].update(parent=sc["nodes"][-1]["id"]), "nodes[0].parent"),
        (lambda sc: sc.update(prices_eur_per_mwh=[1, 2]), "prices_eur_per_mwh"),
    ],
)
def test_bad_scenario_exit_2_one_line(tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    sc = random_scenario(5, stations=3, steps=8)
    mutate(sc)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(sc))
    out = tmp_path / "schedule.json"
    res = runner.invoke(app, ["schedule", str(p), "-o", str(out)])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not out.exists()  # nothing half-written


def test_malformed_json_and_bad_options(tmp_path: Path, scenario_file: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    res = runner.invoke(app, ["schedule", str(p)])
    assert res.exit_code == 2 and "not valid JSON" in res.stderr
    res = runner.invoke(app, ["schedule", str(scenario_file), "--method", "magic"])
    assert res.exit_code == 2 and "--method" in res.stderr
    res = runner.invoke(app, ["schedule", str(scenario_file), "--profiles", "ocpp99"])
    assert res.exit_code == 2 and "--profiles" in res.stderr


def test_schema_files_match_the_code() -> None:
    from optimizer.scenario import scenario_json_schema
    from optimizer.schemas import HERE, schedule_json_schema

    assert json.loads((HERE / "scenario.schema.json").read_text()) == scenario_json_schema()
    assert json.loads((HERE / "schedule.schema.json").read_text()) == schedule_json_schema()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--workers", "0"], "--workers"),
        (["--scheduler", "localhost:8786"], "--scheduler"),
    ],
)
def test_bad_parallel_options_exit_2_one_line(
    scenario_file: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "schedule.json"
    res = runner.invoke(app, ["schedule", str(scenario_file), "-o", str(out), *args])
    assert res.exit_code == 2
    assert needle in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_unreachable_scheduler_exit_2(
    scenario_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1.0)
    out = tmp_path / "schedule.json"
    res = runner.invoke(
        app, ["schedule", str(scenario_file), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9"]
    )
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: --scheduler:")
    assert not out.exists()


def test_workers_option_gives_the_same_schedule(scenario_file: Path, tmp_path: Path) -> None:
    files = []
    for w in ("1", "2"):
        out = tmp_path / f"schedule-{w}.json"
        assert (
            runner.invoke(
                app, ["schedule", str(scenario_file), "-o", str(out), "--workers", w]
            ).exit_code
            == 0
        )
        files.append(json.loads(out.read_text()))
    assert files[0]["sessions"] == files[1]["sessions"]
