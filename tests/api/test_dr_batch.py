"""The vectorised curtailment profiles of a whole activation (api.dr_batch) equal the reference
per-session shapes (api.dr.curtailment_shape / render_shape / curtailment_forms), text for
text, on hand-picked and random published profiles; the OCPP forms derived from the stored
OCPI text equal the reference OCPP forms."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from api import dr
from api.bulk import dumps
from api.dr_batch import render_batch
from api.settings import Settings
from optimizer.profiles import ocpp_forms
from tests.api.test_dr_bulk import PREVIOUS

START = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)


def random_previous(rnd: random.Random) -> dict[str, Any] | None:
    if rnd.random() < 0.1:
        return None
    n = rnd.randint(1, 6)
    starts = sorted(rnd.sample(range(1, 30), n - 1)) if n > 1 else []
    begin = rnd.choice([-1800, -900, -420, 0, 60, 300])
    previous: dict[str, Any] = {
        "start_date_time": (START + timedelta(seconds=begin)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration": rnd.choice([300, 900, 1380 - begin, 3600, 14400]),
        "charging_rate_unit": rnd.choice(["A", "A", "A", "W"]),
        "min_charging_rate": rnd.choice([8.0, 8.0, 6.0]),
        "charging_profile_period": [{"start_period": 0, "limit": rnd.choice([8.0, 16.0, 6.5])}]
        + [{"start_period": 300 * k, "limit": rnd.choice([8.0, 12.0, 31.7, 6.0])} for k in starts],
    }
    if rnd.random() < 0.1:
        del previous["min_charging_rate"]
    return previous


def check_batch(cases: list[tuple[dict[str, Any] | None, datetime, float, int, str]]) -> None:
    settings = Settings(database_url="sqlite://")
    batch = render_batch(
        start=START,
        until_s=np.array([u.timestamp() for _, u, _, _, _ in cases]),
        limit_a=np.array([lim for _, _, lim, _, _ in cases]),
        n_phases=np.array([ph for _, _, _, ph, _ in cases], dtype=np.int64),
        previous=[prev for prev, *_ in cases],
        voltage_v=settings.voltage_v,
        step_s=settings.step_s,
    )
    for k, (prev, until, lim, ph, sid) in enumerate(cases):
        shape = dr.curtailment_shape(start=START, until=until, limit_a=lim, previous=prev)
        ref = dr.render_shape(shape, prev, ph, settings)
        forms = dr.curtailment_forms(
            session_id=sid,
            evse_id=1 + k % 2,
            n_phases=ph,
            start=START,
            until=until,
            limit_a=lim,
            previous=prev,
        )
        assert batch.ocpi[k] == ref.ocpi_text, (prev, until)
        assert batch.limits_a[k] == ref.limits_a_text
        stored = orjson.loads(batch.ocpi[k])
        assert json.dumps(stored) == json.dumps(forms["ocpi"])  # key order too
        assert dumps(forms["ocpi"]) == batch.ocpi[k]
        derived = ocpp_forms(stored, session_id=sid, evse_id=1 + k % 2, n_phases=ph)
        for form in ("ocpp16", "ocpp201"):
            assert json.dumps(derived[form]) == json.dumps(forms[form])
        assert batch.planned_kwh[k] == ref.planned_kwh
        assert bool(batch.changed[k]) == ref.changed, (prev, until)
        assert int(batch.duration_s[k]) == shape.duration_s


def test_batch_equals_the_reference_on_the_hand_picked_profiles() -> None:
    cases = []
    for prev in PREVIOUS:
        for sid in ("s-1", 'we"ird\\id-é'):
            for ph in (1, 3):
                cases.append((prev, datetime(2026, 1, 15, 9, 15, tzinfo=UTC), 6.0, ph, sid))
    check_batch(cases)


def test_batch_equals_the_reference_on_random_profiles() -> None:
    rnd = random.Random(11)
    cases = []
    for k in range(3000):
        prev = random_previous(rnd)
        until = START + timedelta(seconds=rnd.choice([60, 137, 480, 900]))
        lim = rnd.choice([8.0, 6.0, 6.04, 10.0])
        cases.append((prev, until, lim, rnd.choice([1, 3]), f"s-{k}"))
    check_batch(cases)
    changed = [c for c in cases if c[0] is not None]
    assert len(changed) > 2000


def test_empty_batch() -> None:
    check_batch([])


def test_odd_session_ids_derive_the_same_ocpp_forms() -> None:
    """Ids with quotes, backslashes, control and non-ASCII characters: the OCPP forms derived
    from the stored OCPI text carry them as the reference forms do."""
    ids = ["s-1", "NL*GCP*S0001", "é-ü-☃", 'a"b', "a\\b", "tab\there", "nl\n", "\x01"]
    cases: list[tuple[dict[str, Any] | None, datetime, float, int, str]] = [
        (None, START + timedelta(seconds=600), 8.0, 3, sid) for sid in ids
    ]
    check_batch(cases)
