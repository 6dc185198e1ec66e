"""``gridcharge forecast``: train, evaluate and apply departure/energy models (a thin typer
layer over :mod:`forecasting.workflow`). Bad files end with exit code 2 and one line."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

forecast_app = typer.Typer(
    help="Departure-time and energy-need models: train, evaluate, predict.",
    no_args_is_help=True,
)
err_console = Console(stderr=True)


class _Out:
    """stdout: the terminal's width, or 160 columns when piped (the tables stay readable)."""

    def print(self, *objects: Any) -> None:
        import sys

        Console(width=None if sys.stdout.isatty() else 160).print(*objects)


console = _Out()

DataOpt = Annotated[Path, typer.Option("--data", help="Sessions file (.gz allowed).")]
FormatOpt = Annotated[str, typer.Option("--format", help="csv | ocpi | acn")]
SaltOpt = Annotated[
    str | None,
    typer.Option(
        help="Salt of the user-id hash (default: GRIDCHARGE_FORECAST_SALT or a random one).",
    ),
]
TzOpt = Annotated[
    str | None,
    typer.Option(
        help="Local time zone of UTC-only formats (ocpi: Europe/Amsterdam, acn: "
        "America/Los_Angeles)."
    ),
]


def _fail(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@contextmanager
def _errors() -> Iterator[None]:
    """Typed data/model errors → one line and exit code 2."""
    from forecasting.errors import ForecastDataError, ModelFileError

    try:
        yield
    except (ForecastDataError, ModelFileError) as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _progress(title: str) -> Iterator[Callable[[float, str], None]]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(title, total=1.0)

        def update(fraction: float, message: str) -> None:
            bar.update(
                task, completed=min(max(fraction, 0.0), 1.0), description=f"{title}: {message}"
            )

        yield update


def _load(data: Path, fmt: str, salt: str | None, tz: str | None, *, require: bool) -> Any:
    from forecasting.data import load_sessions

    return load_sessions(data, fmt, salt=salt, local_tz=tz, require_departure=require)


def _table(title: str, result: dict[str, dict[str, Any]], quantiles: Any) -> Table:
    from forecasting.workflow import metric_header, metric_rows

    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for i, h in enumerate(metric_header(quantiles)):
        if i == 0:
            table.add_column(h, no_wrap=True, min_width=max(len(n) for n in result))
        else:
            table.add_column(h, justify="right")
    for row in metric_rows(result, quantiles):
        table.add_row(*row)
    return table


@forecast_app.command("train")
def train_cmd(
    data: DataOpt,
    out: Annotated[Path, typer.Option("-o", "--out", help="Model directory to write.")],
    fmt: FormatOpt = "csv",
    salt: SaltOpt = None,
    local_tz: TzOpt = None,
    holiday_country: Annotated[
        str, typer.Option(help="Public-holiday calendar (ISO country code).")
    ] = "NL",
    test_fraction: Annotated[
        float, typer.Option(help="Share of the latest sessions held out for the metrics.")
    ] = 0.2,
    max_iter: Annotated[int, typer.Option(help="Boosting iterations per model.")] = 150,
) -> None:
    """Train departure and energy models on completed sessions; write MODELDIR
    (model.skops + metadata.json) and print the hold-out metrics beside the baselines."""
    from forecasting.model import save
    from forecasting.workflow import train_model

    with _errors():
        df = _load(data, fmt, salt, local_tz, require=True)
        with _progress("training") as progress:
            model = train_model(
                df,
                created_by=getpass.getuser(),
                source=f"file:{data.name} ({fmt})",
                holiday_country=holiday_country,
                test_fraction=test_fraction,
                max_iter=max_iter,
                progress=progress,
            )
        save(model, out)
    m = model.metadata["metrics"]
    console.print(
        _table(
            f"Hold-out: trained on {m['n_train']} sessions, tested on the {m['n_test']} "
            f"arriving from {m['test_from']}",
            m["holdout"],
            model.quantiles,
        )
    )
    console.print(f"model written to {out}")


@forecast_app.command("evaluate")
def evaluate_cmd(
    data: DataOpt,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model", help="Model directory; without it, train and test afresh."),
    ] = None,
    fmt: FormatOpt = "csv",
    salt: SaltOpt = None,
    local_tz: TzOpt = None,
    holiday_country: Annotated[
        str, typer.Option(help="Holiday calendar (without --model).")
    ] = "NL",
    test_fraction: Annotated[float, typer.Option(help="Hold-out share (without --model).")] = 0.2,
    folds: Annotated[int, typer.Option(help="Rolling-origin folds (without --model).")] = 3,
    max_iter: Annotated[int, typer.Option(help="Boosting iterations (without --model).")] = 150,
) -> None:
    """Print the metrics of a model and of both baselines on time-ordered data.

    With --model: the model on the file's sessions that arrived after its training data (all,
    if none did). Without: a time-ordered hold-out and a rolling-origin evaluation."""
    from forecasting.evaluate import evaluate
    from forecasting.model import load
    from forecasting.workflow import after_training, compare

    with _errors():
        df = _load(data, fmt, salt, local_tz, require=True)
        if model_dir is not None:
            model = load(model_dir)
            from forecasting.features import build_features

            X = build_features(df, model.holiday_country)
            test = after_training(model, df)
            result = compare(model, test, X.loc[test.index])
            console.print(_table(f"{len(test)} sessions of {data.name}", result, model.quantiles))
            return
        if folds < 0:
            raise _fail(f"--folds: must be ≥ 0 (got {folds})")
        with _progress("evaluating") as progress:
            ev = evaluate(
                df,
                test_fraction=test_fraction,
                folds=folds,
                holiday_country=holiday_country,
                max_iter=max_iter,
                progress=progress,
            )
    from forecasting.model import QUANTILES

    console.print(
        _table(
            f"Hold-out: train {ev.n_train}, test {ev.n_test} (from {ev.test_from})",
            ev.holdout,
            QUANTILES,
        )
    )
    for i, fold in enumerate(ev.rolling):
        console.print(_table(f"Rolling origin, fold {i + 1}", fold, QUANTILES))


@forecast_app.command("predict")
def predict_cmd(
    model_dir: Annotated[Path, typer.Option("--model", help="Model directory.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("-o", "--out", help="Predictions CSV to write.")],
    fmt: FormatOpt = "csv",
    salt: SaltOpt = None,
    local_tz: TzOpt = None,
) -> None:
    """Predict departure (point and quantiles) and energy need for every session of the file
    (departure may be empty; completed sessions serve as user history)."""
    from forecasting.model import load
    from forecasting.workflow import predictions_frame

    with _errors():
        model = load(model_dir)
        df = _load(data, fmt, salt, local_tz, require=False)
        frame = predictions_frame(model, df)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(out)
    console.print(f"{len(frame)} predictions written to {out}")
