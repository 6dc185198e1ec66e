"""Tests of charging-profile emission (``optimizer/profiles.py``).

Every OCPP payload is validated against the official JSON schemas shipped in the ``ocpp``
package, after a round trip through JSON text parsed with ``parse_float=Decimal`` (as a charger
or CSMS would read it; with binary floats ``multipleOf: 0.1`` rejects e.g. 0.3). The OCPI
ChargingProfile has no official JSON schema; it is checked against a schema written here from
the OCPI 2.2.1 object tables. Rules the schemas cannot express (first ``startPeriod`` 0 and
increasing: OCPP 2.0.1 K01.FR.31/35; ``transactionId`` in a 2.0.1 ``TxProfile``: K01.FR.03;
one decimal in 2.0.1 limits) are checked by :func:`check_rules`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator, Draft6Validator, Draft7Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from optimizer.errors import GridchargeError
from optimizer.profiles import (
    FORMATS,
    ZERO_TOL_A,
    ProfileError,
    charging_profile_id,
    ocpp_forms,
    ocpp_ids,
    profile_limits_a,
    session_profiles,
)

START = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
STEP_S = 900

OFFICIAL_SCHEMAS = {
    "ocpp16": ("v16", "SetChargingProfile.json"),
    "ocpp201": ("v201", "SetChargingProfileRequest.json"),
}

OCPI_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z?$"
"""OCPI 2.2.1 DateTime: string(25), UTC, the six forms of the spec's types chapter."""

OCPI_CHARGING_PROFILE_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "OCPI 2.2.1 ChargingProfile (from mod_charging_profiles, ChargingProfile class)",
    "type": "object",
    "additionalProperties": False,
    "required": ["charging_rate_unit"],
    "properties": {
        "start_date_time": {"type": "string", "maxLength": 25, "pattern": OCPI_DATETIME},
        "duration": {"type": "integer"},
        "charging_rate_unit": {"enum": ["W", "A"]},
        "min_charging_rate": {"type": "number", "multipleOf": Decimal("0.1")},
        "charging_profile_period": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["start_period", "limit"],
                "properties": {
                    "start_period": {"type": "integer"},
                    "limit": {"type": "number", "multipleOf": Decimal("0.1")},
                },
            },
        },
    },
}

OCPP_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def roundtrip(obj: Any) -> Any:
    """``obj`` as a receiver reads it: JSON text parsed with decimal numbers."""
    return json.loads(json.dumps(obj), parse_float=Decimal)


@functools.cache
def official_validator(fmt: str) -> Validator:
    """Validator of the ``ocpp`` package's schema, of the draft named by its ``$schema``."""
    version, name = OFFICIAL_SCHEMAS[fmt]
    text = resources.files("ocpp").joinpath(version, "schemas", name).read_text("utf-8")
    schema = json.loads(text, parse_float=Decimal)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@functools.cache
def ocpi_validator() -> Validator:
    Draft7Validator.check_schema(OCPI_CHARGING_PROFILE_SCHEMA)
    return Draft7Validator(OCPI_CHARGING_PROFILE_SCHEMA)


def one_decimal(x: Decimal) -> bool:
    return x % Decimal("0.1") == 0


def schedule_parts(fmt: str, payload: dict[str, Any]) -> tuple[str, int, list[tuple[int, Any]]]:
    """``(start, duration [s], [(startPeriod [s], limit [A])])`` of any of the three forms."""
    if fmt == "ocpp16":
        sch = payload["csChargingProfiles"]["chargingSchedule"]
    elif fmt == "ocpp201":
        sch = payload["chargingProfile"]["chargingSchedule"][0]
    else:
        periods = [(p["start_period"], p["limit"]) for p in payload["charging_profile_period"]]
        return payload["start_date_time"], payload["duration"], periods
    periods = [(p["startPeriod"], p["limit"]) for p in sch["chargingSchedulePeriod"]]
    return sch["startSchedule"], sch["duration"], periods


def check_rules(profiles: dict[str, dict[str, Any]]) -> None:
    """Validate every emitted form, by schema and by the rules the schemas cannot express."""
    for fmt, payload in profiles.items():
        wire = roundtrip(payload)
        if fmt == "ocpi":
            ocpi_validator().validate(wire)
        else:
            official_validator(fmt).validate(wire)
        start, duration_s, periods = schedule_parts(fmt, wire)
        assert OCPP_TIME.match(start), start
        starts = [s for s, _ in periods]
        assert starts[0] == 0
        assert all(b > a for a, b in itertools.pairwise(starts))
        assert starts[-1] < duration_s
        assert all(one_decimal(lim) for _, lim in periods)
        limits = [lim for _, lim in periods]
        assert all(b != a for a, b in itertools.pairwise(limits)), "not merged"
    if "ocpp201" in profiles:
        prof = profiles["ocpp201"]["chargingProfile"]
        assert profiles["ocpp201"]["evseId"] > 0  # K01.FR.16: a TxProfile needs an EVSE
        assert prof["transactionId"]  # K01.FR.03
        assert one_decimal(roundtrip(prof["chargingSchedule"][0]["minChargingRate"]))
    ids = {
        "ocpp16": lambda p: p["csChargingProfiles"]["chargingProfileId"],
        "ocpp201": lambda p: p["chargingProfile"]["id"],
    }
    assert len({ids[f](p) for f, p in profiles.items() if f in ids}) <= 1


def expand(fmt: str, payload: dict[str, Any], step_s: int) -> list[float]:
    """The profile's limit in each of its steps, re-read from the periods."""
    _, duration_s, periods = schedule_parts(fmt, payload)
    bounds = [s for s, _ in periods[1:]] + [duration_s]
    out: list[float] = []
    for (s, lim), end in zip(periods, bounds, strict=True):
        assert s % step_s == 0 and end % step_s == 0
        out += [lim] * ((end - s) // step_s)
    return out


def make(**kw: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {
        "session_id": "s1",
        "evse_id": 1,
        "start": START,
        "step_s": STEP_S,
        "min_current_a": 8.0,
        "n_phases": 3,
        "pause_consent": False,
    }
    args.update(kw)
    if "present" not in args:
        args["present"] = [True] * len(args["current_a"])
    return session_profiles(**args)


def limits(profiles: dict[str, dict[str, Any]], fmt: str = "ocpp16") -> list[float]:
    return expand(fmt, profiles[fmt], STEP_S)


# ---------------------------------------------------------------------------- schemas


def test_validators_match_the_schema_drafts() -> None:
    assert type(official_validator("ocpp16")) is Draft4Validator
    assert type(official_validator("ocpp201")) is Draft6Validator


def test_validator_enforces_one_decimal() -> None:
    """The OCPP 1.6 schema's ``multipleOf: 0.1`` really bites: two decimals are refused."""
    payload = make(current_a=[16.0])["ocpp16"]
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 12.56
    with pytest.raises(ValidationError, match="multiple of"):
        official_validator("ocpp16").validate(roundtrip(payload))


# ---------------------------------------------------------------------------- hand-computed


def test_hand_computed_profile() -> None:
    """Arrives in step 1; 16, 16, 12.56 (→ 12.5), completes at 3 A (→ 8), full at 0 (→ 8)."""
    out = make(
        evse_id=2,
        current_a=[0.0, 16.0, 16.0, 12.56, 3.0, 0.0],
        present=[False, True, True, True, True, True],
    )
    check_rules(out)
    pid = charging_profile_id("s1")
    periods = [
        {"startPeriod": 0, "limit": 16.0, "numberPhases": 3},
        {"startPeriod": 1800, "limit": 12.5, "numberPhases": 3},
        {"startPeriod": 2700, "limit": 8.0, "numberPhases": 3},
    ]
    assert out["ocpp16"] == {
        "connectorId": 2,
        "csChargingProfiles": {
            "chargingProfileId": pid,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "duration": 5 * 900,
                "startSchedule": "2026-11-25T07:15:00Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": periods,
                "minChargingRate": 8.0,
            },
        },
    }
    assert out["ocpp201"] == {
        "evseId": 2,
        "chargingProfile": {
            "id": pid,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [
                {
                    "id": pid,
                    "startSchedule": "2026-11-25T07:15:00Z",
                    "duration": 4500,
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": periods,
                    "minChargingRate": 8.0,
                }
            ],
            "transactionId": "s1",
        },
    }
    assert out["ocpi"] == {
        "start_date_time": "2026-11-25T07:15:00Z",
        "duration": 4500,
        "charging_rate_unit": "A",
        "min_charging_rate": 8.0,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16.0},
            {"start_period": 1800, "limit": 12.5},
            {"start_period": 2700, "limit": 8.0},
        ],
    }


def test_ocpp_forms_follow_from_the_ocpi_form_and_the_two_ids() -> None:
    """What is stored (the OCPI form, connector and phases) gives back the OCPP forms exactly,
    key order included; without ``min_charging_rate`` the OCPP forms have no minimum rate and
    still pass the official schemas."""
    for evse_id, n_phases in ((1, 3), (2, 1)):
        out = make(
            evse_id=evse_id,
            n_phases=n_phases,
            current_a=[0.0, 16.0, 16.0, 12.56, 3.0, 0.0],
            present=[False, True, True, True, True, True],
        )
        assert ocpp_ids(out, "s1") == (evse_id, n_phases)
        derived = ocpp_forms(out["ocpi"], session_id="s1", evse_id=evse_id, n_phases=n_phases)
        assert json.dumps(derived) == json.dumps({f: out[f] for f in ("ocpp16", "ocpp201")})
    with pytest.raises(ProfileError, match="transactionId"):
        ocpp_ids(make(transaction_id="tx-1", current_a=[16.0]), "s1")
    bare = {k: v for k, v in out["ocpi"].items() if k != "min_charging_rate"}
    derived = ocpp_forms(bare, session_id="s1", evse_id=2, n_phases=1, transaction_id="tx-9")
    assert "minChargingRate" not in derived["ocpp16"]["csChargingProfiles"]["chargingSchedule"]
    assert derived["ocpp201"]["chargingProfile"]["transactionId"] == "tx-9"
    for fmt in ("ocpp16", "ocpp201"):
        official_validator(fmt).validate(roundtrip(derived[fmt]))


def test_equal_limits_are_merged() -> None:
    out = make(current_a=[10.0, 10.0, 10.04, 12.0, 12.0, 10.0])
    check_rules(out)
    sch = out["ocpp16"]["csChargingProfiles"]["chargingSchedule"]
    assert [(p["startPeriod"], p["limit"]) for p in sch["chargingSchedulePeriod"]] == [
        (0, 10.0),
        (2700, 12.0),
        (4500, 10.0),
    ]
    assert [(p["start_period"], p["limit"]) for p in out["ocpi"]["charging_profile_period"]] == [
        (0, 10.0),
        (2700, 12.0),
        (4500, 10.0),
    ]


def test_constant_plan_is_one_period() -> None:
    out = make(current_a=[16.0] * 8)
    check_rules(out)
    sch = out["ocpp16"]["csChargingProfiles"]["chargingSchedule"]
    assert sch["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 16.0, "numberPhases": 3}]
    assert sch["duration"] == 8 * STEP_S


def test_completing_step_below_minimum_is_sent_at_minimum() -> None:
    out = make(current_a=[16.0, 3.0])
    assert limits(out) == [16.0, 8.0]
    assert profile_limits_a([16.0, 3.0], [True, True], 8.0, False).tolist() == [16.0, 8.0]


def test_plugged_in_at_zero_without_consent_is_sent_at_minimum() -> None:
    """A full car (planned 0 A) is not paused: it stops by itself at the minimum limit."""
    out = make(current_a=[16.0, 0.0, 0.0])
    assert limits(out) == [16.0, 8.0, 8.0]


def test_pause_consent_zero_is_kept() -> None:
    out = make(current_a=[0.0, 0.0, 16.0, 3.0, 0.0], pause_consent=True)
    check_rules(out)
    assert limits(out) == [0.0, 0.0, 16.0, 8.0, 0.0]
    assert limits(out, "ocpi") == [0.0, 0.0, 16.0, 8.0, 0.0]
    # solver noise around zero counts as zero (tolerance as documented in docs/profiles.md)
    assert ZERO_TOL_A == 1e-3
    noisy = profile_limits_a([1e-9, -1e-9, 5e-4], [True] * 3, 8.0, True)
    assert noisy.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("plan_a", "sent_a"),
    [
        (12.56, 12.5),
        (12.54, 12.5),
        (12.5, 12.5),
        (12.4999999999, 12.5),  # solver noise, not a real 12.4
        (8.05, 8.0),  # never below the minimum by rounding
        (8.0, 8.0),
        (15.99, 15.9),
        (16.0, 16.0),
    ],
)
def test_limits_are_rounded_down_to_one_decimal(plan_a: float, sent_a: float) -> None:
    assert profile_limits_a([plan_a], [True], 8.0, False).tolist() == [sent_a]
    assert limits(make(current_a=[plan_a])) == [sent_a]


def test_minimum_with_two_decimals_is_rounded_up() -> None:
    out = make(current_a=[3.0, 16.0], min_current_a=6.05)
    check_rules(out)
    assert limits(out) == [6.1, 16.0]
    assert out["ocpp16"]["csChargingProfiles"]["chargingSchedule"]["minChargingRate"] == 6.1
    assert out["ocpi"]["min_charging_rate"] == 6.1


def test_start_schedule_is_the_first_present_step() -> None:
    start = datetime.fromisoformat("2026-11-25T08:00:00+01:00")  # aware, not UTC
    out = make(
        start=start,
        step_s=600,
        current_a=[0.0, 0.0, 0.0, 10.0, 10.0, 0.0],
        present=[False, False, False, True, True, False],
    )
    check_rules(out)
    for fmt in FORMATS:
        start_schedule, duration_s, _ = schedule_parts(fmt, out[fmt])
        assert start_schedule == "2026-11-25T07:30:00Z"
        assert duration_s == 2 * 600


def test_ocpi_limits_have_one_decimal_in_the_json_text() -> None:
    out = make(current_a=[12.34, 6.66, 9.99, 10.31, 0.35], min_current_a=0.2)
    check_rules(out)
    text = json.dumps(out["ocpi"])
    assert re.findall(r'"limit": ([0-9.eE+-]+)', text) == ["12.3", "6.6", "9.9", "10.3", "0.3"]
    assert '"min_charging_rate": 0.2' in text


def test_number_of_phases() -> None:
    out = make(current_a=[16.0], n_phases=1)
    check_rules(out)
    sch16 = out["ocpp16"]["csChargingProfiles"]["chargingSchedule"]
    sch201 = out["ocpp201"]["chargingProfile"]["chargingSchedule"][0]
    assert sch16["chargingSchedulePeriod"][0]["numberPhases"] == 1
    assert sch201["chargingSchedulePeriod"][0]["numberPhases"] == 1


def test_numpy_inputs_as_the_emitter_passes_them() -> None:
    cur = [0.0, 16.0, 12.56, 0.0]
    pres = [False, True, True, False]
    from_lists = make(current_a=cur, present=pres, evse_id=2)
    from_numpy = make(
        current_a=np.asarray(cur), present=np.asarray(pres), evse_id=np.int64(2), n_phases=3
    )
    assert from_numpy == from_lists
    assert json.dumps(from_numpy)  # plain Python numbers only


def test_docs_examples_are_what_the_code_emits() -> None:
    """The three JSON examples of ``docs/profiles.md`` are the output for its example input."""
    doc = (Path(__file__).parents[2] / "docs" / "profiles.md").read_text("utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, flags=re.S)]
    out = session_profiles(
        session_id="s-0417",
        evse_id=2,
        start=datetime.fromisoformat("2026-11-25T08:00:00+01:00"),
        step_s=900,
        current_a=[0, 16, 16, 12.56, 3, 0],
        present=[False, True, True, True, True, True],
        min_current_a=8,
        n_phases=3,
        pause_consent=False,
        transaction_id="f3b8c2d0-17aa-4d5e-9a61-2c0e4f7b9d13",
    )
    check_rules(out)
    assert blocks == [out["ocpp16"], out["ocpp201"], out["ocpi"]]


# ---------------------------------------------------------------------------- ids, formats


def test_profile_id_is_deterministic() -> None:
    sid = "NL*GCX*S0001"
    expected = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "big") % (2**31 - 1) + 1
    assert charging_profile_id(sid) == expected
    assert charging_profile_id("s1") == 1416039940  # pinned: the same in every run and process
    ids = {charging_profile_id(f"session-{k}") for k in range(1000)}
    assert len(ids) == 1000
    assert all(1 <= i <= 2**31 - 1 for i in ids)
    out = make(current_a=[16.0], session_id=sid)
    assert out["ocpp16"]["csChargingProfiles"]["chargingProfileId"] == expected
    assert out["ocpp201"]["chargingProfile"]["id"] == expected
    assert out["ocpp201"]["chargingProfile"]["chargingSchedule"][0]["id"] == expected


def test_only_requested_formats() -> None:
    assert list(make(current_a=[16.0], formats=("ocpi",))) == ["ocpi"]
    assert list(make(current_a=[16.0], formats=["ocpi", "ocpp16"])) == ["ocpp16", "ocpi"]
    assert list(make(current_a=[16.0], formats="ocpp201")) == ["ocpp201"]
    assert make(current_a=[16.0], formats=()) == {}
    with pytest.raises(ProfileError, match="formats"):
        make(current_a=[16.0], formats=("ocpp21",))


def test_transaction_id() -> None:
    tx = make(current_a=[16.0], transaction_id="a3f2-77")["ocpp201"]["chargingProfile"]
    assert tx["transactionId"] == "a3f2-77"
    long_id = "x" * 37
    with pytest.raises(ProfileError, match="transaction_id"):
        make(current_a=[16.0], session_id=long_id)
    out = make(current_a=[16.0], session_id=long_id, formats=("ocpp16", "ocpi"))
    check_rules(out)
    check_rules(make(current_a=[16.0], session_id=long_id, transaction_id="t1"))


# ---------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"current_a": [16.0, 16.0], "present": [True]}, "current_a"),
        ({"start": datetime(2026, 11, 25, 7, 0)}, "start"),
        ({"start": START.replace(microsecond=500)}, "start"),
        ({"start": "2026-11-25T07:00:00Z"}, "start"),
        ({"n_phases": 2}, "n_phases"),
        ({"n_phases": True}, "n_phases"),
        ({"current_a": [16.0, -1.0]}, r"current_a\[1\]"),
        ({"current_a": [16.0, float("nan")]}, r"current_a\[1\]"),
        ({"current_a": [[16.0]]}, "current_a"),
        ({"current_a": ["a"]}, "current_a"),
        ({"current_a": [0.0, 0.0], "present": [False, False]}, "present"),
        ({"current_a": [10.0, 0.0, 10.0], "present": [True, False, True]}, r"present\[1\]"),
        ({"current_a": [10.0, 5.0], "present": [True, False]}, r"current_a\[1\]"),
        ({"present": ["yes", "no"]}, "present"),
        ({"evse_id": 0}, "evse_id"),
        ({"step_s": 0}, "step_s"),
        ({"step_s": 900.0}, "step_s"),
        ({"min_current_a": 0.0}, "min_current_a"),
        ({"min_current_a": float("inf")}, "min_current_a"),
        ({"session_id": ""}, "session_id"),
        ({"transaction_id": ""}, "transaction_id"),
    ],
)
def test_bad_inputs_raise_profile_error(change: dict[str, Any], field: str) -> None:
    kw: dict[str, Any] = {"current_a": [16.0, 16.0]}
    kw.update(change)
    with pytest.raises(ProfileError, match=field) as info:
        make(**kw)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GridchargeError)
    if change.get("session_id") != "":
        assert "'s1'" in str(info.value)


def test_never_present_names_the_session() -> None:
    with pytest.raises(ProfileError, match="session 'ev-42': present") as info:
        make(session_id="ev-42", current_a=[0.0] * 4, present=[False] * 4)
    assert info.value.session_id == "ev-42"
    assert info.value.field == "present"


def test_limits_bad_inputs() -> None:
    with pytest.raises(ProfileError, match="current_a"):
        profile_limits_a([1.0, 2.0], [True], 8.0, False)
    with pytest.raises(ProfileError, match=r"current_a\[0\]"):
        profile_limits_a([-0.5], [True], 8.0, False)
    with pytest.raises(ProfileError, match="min_current_a"):
        profile_limits_a([10.0], [True], -8.0, False)
    assert profile_limits_a([], [], 8.0, False).tolist() == []


def test_too_many_periods_for_ocpp201() -> None:
    cur = [8.0 + (k % 2) for k in range(1025)]
    with pytest.raises(ProfileError, match="chargingSchedulePeriod"):
        make(current_a=cur, step_s=60)
    out = make(current_a=cur, step_s=60, formats=("ocpp16",))
    assert len(out["ocpp16"]["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"])


# ---------------------------------------------------------------------------- property


@st.composite
def random_sessions(draw: st.DrawFn) -> dict[str, Any]:
    steps = draw(st.integers(min_value=1, max_value=96))
    arrive = draw(st.integers(min_value=0, max_value=steps - 1))
    depart = draw(st.integers(min_value=arrive + 1, max_value=steps))
    n = depart - arrive
    current = st.one_of(
        st.just(0.0),
        st.sampled_from([3.0, 6.0, 8.0, 12.5, 16.0]),
        st.floats(min_value=0.0, max_value=32.0, allow_nan=False),
    )
    plan = draw(st.lists(current, min_size=n, max_size=n))
    start = draw(
        st.datetimes(
            min_value=datetime(2020, 1, 1),
            max_value=datetime(2035, 12, 31),
            timezones=st.sampled_from(
                [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))]
            ),
        )
    ).replace(microsecond=0)
    return {
        "session_id": draw(st.text(min_size=1, max_size=36)),
        "evse_id": draw(st.integers(min_value=1, max_value=4)),
        "start": start,
        "step_s": draw(st.sampled_from([60, 300, 900, 3600])),
        "current_a": [0.0] * arrive + plan + [0.0] * (steps - depart),
        "present": [False] * arrive + [True] * n + [False] * (steps - depart),
        "min_current_a": draw(
            st.one_of(st.sampled_from([6.0, 8.0]), st.floats(min_value=6.0, max_value=16.0))
        ),
        "n_phases": draw(st.sampled_from([1, 3])),
        "pause_consent": draw(st.booleans()),
    }


@settings(max_examples=200, deadline=None)
@given(args=random_sessions())
def test_random_profiles_validate_and_respect_the_plan(args: dict[str, Any]) -> None:
    out = session_profiles(**args)
    assert list(out) == list(FORMATS)
    check_rules(out)

    pres = np.asarray(args["present"])
    plan = np.asarray(args["current_a"])[pres]
    first = int(np.flatnonzero(pres)[0])
    per_step = profile_limits_a(
        args["current_a"], args["present"], args["min_current_a"], args["pause_consent"]
    )
    assert (per_step[~pres] == 0).all()
    want_start = args["start"] + timedelta(seconds=first * args["step_s"])
    for fmt in FORMATS:
        start_schedule, duration_s, _ = schedule_parts(fmt, out[fmt])
        assert datetime.fromisoformat(start_schedule) == want_start
        assert duration_s == int(pres.sum()) * args["step_s"]
        sent = np.asarray(expand(fmt, out[fmt], args["step_s"]), dtype=float)
        assert sent.tolist() == per_step[pres].tolist()
        paused = args["pause_consent"] & (plan <= ZERO_TOL_A)
        assert (sent >= plan - 0.1 - 1e-9).all()
        assert (sent[~paused] >= args["min_current_a"] - 1e-6).all()
        assert (sent[paused] == 0.0).all()
        # never above the plan unless the minimum lifts it
        lifted = np.maximum(plan, np.ceil(args["min_current_a"] * 10 - 1e-5) / 10)
        assert (sent <= lifted + 1e-6).all()
