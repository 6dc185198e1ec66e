"""Loaders: the generic CSV, OCPI 2.2.1 CDRs/Sessions, ACN-Data; hashing; typed errors."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from forecasting.data import (
    from_records,
    hash_user,
    load_acn,
    load_csv,
    load_ocpi,
    load_sessions,
)
from forecasting.errors import ForecastDataError
from tests.forecasting.conftest import HEADER, SLICE

ROW = "a,user-7,st-1,2026-01-05T08:00:00+01:00,2026-01-05T17:30:00+01:00,12.5\n"


def test_csv_loads_and_hashes_users() -> None:
    df = load_csv((HEADER + ROW).encode(), salt="s1")
    assert list(df["session_id"]) == ["a"]
    assert df["arrival"].iat[0] == pd.Timestamp("2026-01-05T07:00:00Z")
    assert df["departure"].iat[0] == pd.Timestamp("2026-01-05T16:30:00Z")
    assert df["utc_offset_h"].iat[0] == 1.0 and df["energy_kwh"].iat[0] == 12.5
    uid = df["user_id"].iat[0]
    assert uid == hash_user("user-7", b"s1") and "user-7" not in uid and len(uid) == 32
    assert load_csv((HEADER + ROW).encode(), salt="s2")["user_id"].iat[0] != uid  # salted


def test_shipped_slice_loads() -> None:
    df = load_csv(SLICE, salt="x")
    assert len(df) == 1100 and df["user_id"].notna().all()
    assert df["arrival"].is_monotonic_increasing
    assert (df["departure"] > df["arrival"]).all()


def test_gzip_and_prediction_input_without_departure() -> None:
    text = HEADER + "b,,st-2,2026-01-05T09:00:00Z,,\n"
    df = load_csv(gzip.compress(text.encode()), require_departure=False)
    assert df["departure"].isna().all() and df["user_id"].iat[0] is None
    assert np.isnan(df["energy_kwh"].iat[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "data: empty file"),
        (HEADER, "data: no sessions"),
        ("session_id,user_id,arrival,departure,energy_kwh\n", "column station_id: missing column"),
        (
            HEADER + "a,u,s,2026-01-05T08:00:00,2026-01-05T17:00:00+01:00,5\n",
            "row 1 (session a).arrival: time without UTC offset",
        ),
        (
            HEADER + ROW + "b,u,s,2026-01-05T08:00:00+01:00,2026-01-05T08:00:00+01:00,5\n",
            "row 2 (session b).departure: departure not after arrival",
        ),
        (
            HEADER + "a,u,s,yesterday,2026-01-05T08:00:00Z,5\n",
            "row 1 (session a).arrival: not an ISO",
        ),
        (
            HEADER + "a,u,s,2026-01-05T07:00:00Z,2026-01-05T08:00:00Z,-1\n",
            "row 1 (session a).energy_kwh",
        ),
        (HEADER + ROW + ROW, "row 2 (session a).session_id: duplicate"),
        (
            HEADER + "a,u,s,1066-10-14T09:00:00Z,1066-10-14T17:00:00Z,1\n",
            "row 1 (session a).arrival: year",
        ),
        (HEADER + "a," + "x" * 200_000 + ",s,2026-01-05T07:00:00Z,,1\n", "data: not CSV"),
    ],
)
def test_csv_errors_name_row_and_field(text: str, message: str) -> None:
    with pytest.raises(ForecastDataError) as err:
        load_csv(text.encode())
    assert str(err.value).startswith(message), str(err.value)


def test_missing_file_and_unknown_format(tmp_path: object) -> None:
    with pytest.raises(ForecastDataError, match="data: no such file"):
        load_sessions("/nonexistent/x.csv")
    with pytest.raises(ForecastDataError, match="format: unknown format"):
        load_sessions(b"x", "xls")


CDR = {
    "id": "cdr-1",
    "start_date_time": "2026-06-01T06:00:00Z",
    "end_date_time": "2026-06-01T15:00:00Z",
    "total_energy": 20.5,
    "cdr_token": {"uid": "04ABCDEF", "type": "RFID", "contract_id": "NL-GCX-1"},
    "cdr_location": {"id": "LOC1", "evse_uid": "EVSE1"},
}
SESSION = {
    "id": "ses-2",
    "start_date_time": "2026-06-02T06:00:00Z",
    "end_date_time": "2026-06-02T07:30:00",
    "kwh": 4.0,
    "cdr_token": {"uid": "04abcdef"},
    "location_id": "LOC1",
    "evse_uid": "EVSE2",
}


def test_ocpi_cdrs_and_sessions() -> None:
    df = load_ocpi(json.dumps({"data": [SESSION, CDR]}).encode(), salt="k")
    assert list(df["session_id"]) == ["cdr-1", "ses-2"]
    assert list(df["station_id"]) == ["LOC1/EVSE1", "LOC1/EVSE2"]
    assert list(df["energy_kwh"]) == [20.5, 4.0]
    assert df["user_id"].iat[0] == df["user_id"].iat[1]  # token uids are case-insensitive
    assert df["departure"].iat[1] == pd.Timestamp("2026-06-02T07:30:00Z")  # no designator = UTC
    assert df["utc_offset_h"].iat[0] == 2.0  # Amsterdam summer time for the features
    bad = dict(CDR, end_date_time="2026-06-01T05:00:00Z")
    with pytest.raises(ForecastDataError, match=r"data\[0\] \(session cdr-1\).end_date_time"):
        load_ocpi(json.dumps([bad]).encode())
    with pytest.raises(ForecastDataError, match="data: no sessions"):
        load_ocpi(b"[]")
    with pytest.raises(ForecastDataError, match=r"data\[0\].start_date_time: missing"):
        load_ocpi(json.dumps([{"id": "x"}]).encode())


ACN_HEADER = (
    "arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,session_id,"
    "estimated_departure,claimed\n"
)


def test_acn_csv_keeps_stated_values_only_for_claimed_sessions() -> None:
    text = ACN_HEADER + (
        "2019-05-01 06:33:14-07:00,2019-05-01 11:50:55-07:00,21.84,17.666,CA-314,s1,"
        "2019-05-01 11:27:14-07:00,True\n"
        "2019-05-01 07:00:00-07:00,2019-05-01 12:00:00-07:00,9.0,9.0,CA-315,s2,"
        "2019-05-01 12:00:00-07:00,False\n"
    )
    df = load_acn(text.encode())
    claimed, unclaimed = df.iloc[0], df.iloc[1]
    assert claimed["stated_departure"] == pd.Timestamp("2019-05-01T18:27:14Z")
    assert claimed["stated_energy_kwh"] == 21.84 and claimed["utc_offset_h"] == -7.0
    assert pd.isna(unclaimed["stated_departure"]) and np.isnan(unclaimed["stated_energy_kwh"])
    assert unclaimed["energy_kwh"] == 9.0


def test_acn_api_json() -> None:
    doc = {
        "_items": [
            {
                "sessionID": "2_39_1",
                "stationID": "2-39-78-362",
                "userID": "000000001",
                "connectionTime": "Wed, 25 Apr 2018 11:08:04 GMT",
                "disconnectTime": "Wed, 25 Apr 2018 13:20:10 GMT",
                "kWhDelivered": 7.9,
                "userInputs": [
                    {"requestedDeparture": "Wed, 25 Apr 2018 14:00:00 GMT", "kWhRequested": 10}
                ],
            }
        ]
    }
    df = load_acn(json.dumps(doc).encode())
    assert df["arrival"].iat[0] == pd.Timestamp("2018-04-25T11:08:04Z")
    assert df["utc_offset_h"].iat[0] == -7.0  # Pasadena, daylight saving time
    assert df["stated_energy_kwh"].iat[0] == 10 and df["user_id"].iat[0] is not None
    with pytest.raises(ForecastDataError, match=r"_items\[0\].stationID: missing"):
        load_acn(json.dumps({"_items": [{"sessionID": "x"}]}).encode())


def test_service_records() -> None:
    t = datetime(2026, 3, 1, 8, tzinfo=UTC)
    rec = {
        "session_id": "x",
        "user": "abc",
        "station_id": "st-1",
        "arrival": t,
        "departure": t.replace(hour=17),
        "energy_kwh": 9.0,
        "stated_departure": t.replace(hour=16),
        "stated_energy_kwh": None,
    }
    df = from_records([rec], salt="s")
    assert df["stated_departure"].iat[0] == pd.Timestamp("2026-03-01T16:00Z")
    with pytest.raises(ForecastDataError, match="departure not after arrival"):
        from_records([dict(rec, departure=t)])
    with pytest.raises(ForecastDataError, match="naive"):
        from_records([dict(rec, arrival=t.replace(tzinfo=None))])
