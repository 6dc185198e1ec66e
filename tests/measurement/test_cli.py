"""``gridcharge measure`` and ``gridcharge simulate-day``: files written, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from optimizer.cli import app
from tests.measurement import cases

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "states": tmp_path / "states.csv",
        "activations": tmp_path / "activations.json",
        "prices": tmp_path / "prices.csv",
        "meters": tmp_path / "meters.csv",
    }
    pd.DataFrame(cases.states()).to_csv(out["states"], index=False)
    out["activations"].write_text(json.dumps(cases.activation(price_eur_per_mwh="")))
    pd.DataFrame(
        [{"start": cases.iso(cases.T0 + pd.Timedelta(minutes=15)), "price_eur_per_mwh": 250}]
    ).to_csv(out["prices"], index=False)
    pd.DataFrame(
        [
            {
                "station": "st-1",
                "start": cases.iso(cases.T0 + pd.Timedelta(minutes=15 * q)),
                "kwh": 5.0,
            }
            for q in range(4)
        ]
    ).to_csv(out["meters"], index=False)
    return out


def test_measure_writes_the_report(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["measure", "--states", str(files["states"]), "--activations", str(files["activations"])]
    args += ["--prices", str(files["prices"]), "--meters", str(files["meters"]), "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    (act,) = report["activations"]
    assert act["shifted_kwh"] == pytest.approx(0.92, abs=1e-3)
    assert act["value_eur"] == pytest.approx(0.92 * 0.25, abs=1e-3)
    assert report["non_responding"]["stations"][0]["station"] == "st-1"
    for name in (
        "README.md",
        "activations.csv",
        "non_responding.csv",
        "erasable_by_hour.csv",
        "isp_energy_by_region.csv",
        "isp_energy_by_subcluster.csv",
        "meter_vs_reconstructed.png",
        "actual_vs_theoretical_minimum.png",
        "erasable_by_hour.png",
        "activations/act-1.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "meter_vs_reconstructed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "act-1" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp": "2026-11-20T10:02:00"}, "states[0].timestamp: needs a UTC offset"),
        ({"kwh": -1.0}, "states[0].kwh: must be >= 0"),
    ],
)
def test_bad_states_exit_2_with_one_line(
    files: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    recs = cases.states()
    recs[0].update(change)
    pd.DataFrame(recs).to_csv(files["states"], index=False)
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(files["states"]),
            "--activations",
            str(files["activations"]),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()  # nothing written


def test_missing_file_and_bad_zone_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(tmp_path / "none.csv"),
            "--activations",
            str(files["activations"]),
        ],
    )
    assert res.exit_code == 2 and "states: cannot be read" in res.output
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(files["states"]),
            "--activations",
            str(files["activations"]),
            "--tz",
            "Mars/Base",
        ],
    )
    assert res.exit_code == 2 and "--tz: unknown time zone" in res.output


def test_simulate_day_then_measure(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    res = runner.invoke(app, ["simulate-day", "--stations", "20", "--seed", "4", "-o", str(sim)])
    assert res.exit_code == 0, res.output
    for name in ("states", "activations", "meters", "prices", "injected", "truth", "profiles"):
        assert (sim / f"{name}.csv").exists()
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(sim / "states.csv"),
            "--activations",
            str(sim / "activations.csv"),
            "--meters",
            str(sim / "meters.csv"),
            "--prices",
            str(sim / "prices.csv"),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert len(report["activations"]) == len(pd.read_csv(sim / "activations.csv"))
    assert {a["method"] for a in report["activations"]} == {"trapezoid"}
    # with the profiles the simulator wrote, the headline is the per-session baseline
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(sim / "states.csv"),
            "--activations",
            str(sim / "activations.csv"),
            "--profiles",
            str(sim / "profiles.csv"),
            "-o",
            str(tmp_path / "with-profiles"),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "with-profiles" / "report.json").read_text())
    measured = [a for a in report["activations"] if a["sessions"]]
    assert measured and {a["method"] for a in measured} == {"session"}
    assert runner.invoke(app, ["simulate-day", "--stations", "0"]).exit_code == 2
    assert runner.invoke(app, ["simulate-day", "--method", "milp"]).exit_code == 2


def _profiles(path: Path, **change: object) -> Path:
    rows = [
        {"session_id": sid, "start": cases.iso(cases.T0), "limit_a": 16.0, "end": ""}
        for sid in ("a", "b")
    ]
    rows[1].update(change)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_measure_with_profiles_uses_the_session_baseline(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Both cars of the hand case are planned at 16 A and drew it: the per-session baseline is
    2 · 11.04 kW · 10 min = 3.68 kWh, shifted 0.92 kWh, valued at the ISP's 250 EUR/MWh; the
    trapezoid (the same here) stays in ``trapezoid_*``."""
    out = tmp_path / "report"
    args = ["measure", "--states", str(files["states"]), "--activations", str(files["activations"])]
    args += ["--prices", str(files["prices"]), "-o", str(out)]
    args += ["--profiles", str(_profiles(tmp_path / "profiles.csv"))]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "per-session plan baseline" in res.output
    report = json.loads((out / "report.json").read_text())
    (act,) = report["activations"]
    assert act["method"] == "session" and report["baseline"]["method"] == "session"
    assert act["baseline_kwh"] == pytest.approx(3.68, abs=2e-3)
    assert act["shifted_kwh"] == pytest.approx(0.92, abs=2e-3)
    assert act["trapezoid_shifted_kwh"] == pytest.approx(0.92, abs=2e-3)
    # performance ratio E_shift / (E_base − E_min) = 0.92 / (3.68 − 1.84)
    assert act["performance_ratio"] == pytest.approx(0.5, abs=2e-3)
    assert act["value_eur"] == pytest.approx(0.92 * 0.25, abs=1e-3)
    assert [s["price_eur_per_mwh"] for s in act["segments"]] == [250]
    assert "per-session plan baseline" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"start": "2026-11-20T10:00:00"}, "profiles[1].start: needs a UTC offset"),
        ({"limit_a": -2}, "profiles[1].limit_a: must be >= 0"),
        ({"end": "2026-11-20T09:00:00Z"}, "profiles[1].end: must be after start"),
    ],
)
def test_bad_profiles_exit_2_with_one_line(
    files: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(files["states"]),
            "--activations",
            str(files["activations"]),
            "--profiles",
            str(_profiles(tmp_path / "profiles.csv", **change)),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
    res = runner.invoke(
        app,
        [
            "measure",
            "--states",
            str(files["states"]),
            "--activations",
            str(files["activations"]),
            "--profiles",
            str(tmp_path / "none.csv"),
        ],
    )
    assert res.exit_code == 2 and "profiles: cannot be read" in res.output
