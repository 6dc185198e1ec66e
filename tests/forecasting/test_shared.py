"""On the real shared datasets (``../shared/data``, absent on a fresh clone: skipped): the
model beats both baselines on a time-ordered split of the US workplace set (user ids), and
the ACN-Data exports load with the leak of unclaimed sessions removed."""

from __future__ import annotations

import pytest

from forecasting.data import load_acn
from forecasting.evaluate import HOUR, MODEL, USER, evaluate
from tests.forecasting.conftest import SHARED

WORKPLACE = SHARED / "workplace" / "station_data.csv"
ACN = SHARED / "acn" / "caltech" / "2019-05-01_2019-08-31.csv.gz"


@pytest.mark.skipif(not WORKPLACE.is_file(), reason=f"shared data absent: {WORKPLACE}")
def test_model_beats_both_baselines_on_the_workplace_set() -> None:
    from benchmarks.forecasting import load_workplace

    df = load_workplace(WORKPLACE, b"test")
    assert len(df) > 3000 and df["user_id"].notna().all()
    ev = evaluate(df, folds=0, holiday_country="US", max_iter=100)
    hold = ev.holdout
    assert hold[MODEL]["mae_h"] < hold[USER]["mae_h"]
    assert hold[MODEL]["mae_h"] < hold[HOUR]["mae_h"]
    assert abs(hold[MODEL]["coverage_80"] - 0.8) <= 0.1


@pytest.mark.skipif(not ACN.is_file(), reason=f"shared data absent: {ACN}")
def test_acn_export_loads_without_the_leak() -> None:
    df = load_acn(ACN, salt="t")
    assert len(df) > 3000 and df["user_id"].isna().all()
    stated = df["stated_departure"].notna()
    assert 0 < stated.sum() < len(df)  # only claimed sessions keep their stated departure
    assert (df["departure"] > df["arrival"]).all()
