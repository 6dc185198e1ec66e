"""``gridcharge forecast``: train, evaluate and predict on files; exit code 2 with one line on
bad files and refused models."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from forecasting.model import MODEL_FILE
from optimizer.cli import app
from tests.forecasting.conftest import HEADER

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.forecasting.conftest import commuter_csv

    d = tmp_path_factory.mktemp("cli")
    data = d / "sessions.csv"
    data.write_text(commuter_csv(), encoding="utf-8")
    out = d / "model"
    r = runner.invoke(
        app, ["forecast", "train", "--data", str(data), "-o", str(out), "--max-iter", "40"]
    )
    assert r.exit_code == 0, r.output
    assert "model written to" in r.output and "hour median" in r.output
    return data, out


def test_train_evaluate_predict(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    assert (model / MODEL_FILE).is_file() and (model / "metadata.json").is_file()
    r = runner.invoke(app, ["forecast", "evaluate", "--data", str(data), "--model", str(model)])
    assert r.exit_code == 0, r.output
    assert "model" in r.output and "user median" in r.output and "cov 80" in r.output
    r = runner.invoke(
        app,
        ["forecast", "evaluate", "--data", str(data), "--folds", "1", "--max-iter", "20"],
    )
    assert r.exit_code == 0, r.output
    assert "Rolling origin, fold 1" in r.output
    # prediction input: sessions still plugged in (no departure) after completed ones
    future = data.read_text() + "new-1,user-3,st-1,2026-03-02T08:00:00+01:00,,\n"
    src = tmp_path / "live.csv"
    src.write_text(future, encoding="utf-8")
    out = tmp_path / "pred.csv"
    r = runner.invoke(
        app, ["forecast", "predict", "--model", str(model), "--data", str(src), "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out)
    row = pred[pred["session_id"] == "new-1"].iloc[0]
    assert pd.isna(row["departure_actual"])
    assert row["stay_q10_h"] <= row["stay_q50_h"] <= row["stay_q90_h"]
    assert pred["departure"].str.endswith("Z").all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "error: data: empty file"),
        ("session_id,user_id\n", "error: column station_id: missing column"),
        (
            HEADER + "a,u,s,2026-01-05T08:00:00,2026-01-05T17:00:00+01:00,5\n",
            "error: row 1 (session a).arrival: time without UTC offset",
        ),
        (
            HEADER + "a,u,s,2026-01-05T08:00:00Z,2026-01-05T07:00:00Z,5\n",
            "error: row 1 (session a).departure: departure not after arrival",
        ),
    ],
)
def test_bad_files_exit_2(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    r = runner.invoke(app, ["forecast", "train", "--data", str(bad), "-o", str(tmp_path / "m")])
    assert r.exit_code == 2
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_refused_model_and_bad_options_exit_2(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / MODEL_FILE).write_bytes((broken / MODEL_FILE).read_bytes()[:-10])
    for args in (
        ["forecast", "predict", "--model", str(broken), "--data", str(data), "-o", "x.csv"],
        ["forecast", "evaluate", "--model", str(broken), "--data", str(data)],
        ["forecast", "train", "--data", str(data), "-o", str(tmp_path / "m"), "--format", "xls"],
        ["forecast", "evaluate", "--data", str(data), "--test-fraction", "2"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
