"""Restart mid-day: kill -9 the real server process, start it again, and lose nothing."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from api.routes.topology import EXAMPLE as TOPOLOGY
from tests.api.conftest import ServerProcess, auth, make_key


def _session(sid: str, evse: str, start: datetime, kwh: float) -> dict[str, Any]:
    from api.routes.ocpi_sessions import SESSION_EXAMPLE

    body = copy.deepcopy(SESSION_EXAMPLE)
    z = start.isoformat().replace("+00:00", "Z")
    body.update(id=sid, evse_uid=evse, start_date_time=z, last_updated=z, kwh=kwh, status="ACTIVE")
    body.pop("end_date_time", None)
    return body


def test_kill_9_loses_nothing_and_scheduling_resumes(db_url: str) -> None:
    operator, csms = make_key(db_url, "operator"), make_key(db_url, "csms")
    dso = make_key(db_url, "dso", ["region-01"])
    env = {"GRIDCHARGE_RESCHEDULE_EVERY_S": "3600", "GRIDCHARGE_DEBOUNCE_S": "0"}
    srv = ServerProcess(db_url, env).start()
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    day = datetime.now(ZoneInfo("Europe/Amsterdam")).date().isoformat()
    c = httpx.Client(base_url=srv.url, timeout=30)
    try:
        assert c.put("/v1/topology", json=TOPOLOGY, headers=auth(operator)).status_code == 200
        for k, evse in enumerate(("st-00001-1", "st-00001-2")):
            sid = f"sess-{k}"
            r = c.put(
                f"/ocpi/2.2.1/sessions/NL/GCP/{sid}",
                json=_session(sid, evse, now, 0.0),
                headers=auth(csms),
            )
            assert r.status_code in (200, 201), r.text
            r = c.put(
                f"/ocpi/2.2.1/sessions/NL/GCP/{sid}/charging_preferences",
                json={
                    "profile_type": "REGULAR",
                    "energy_need": 20.0,
                    "departure_time": (now + timedelta(hours=5)).isoformat(),
                },
                headers=auth(csms),
            )
            assert r.status_code == 200, r.text
        states = [
            {
                "session_id": f"sess-{k}",
                "timestamp": (now + timedelta(minutes=5 * j)).isoformat(),
                "kwh": 0.9 * j,
                "current_a": [16.0, 16.0, 16.0],
                "phases": 3,
            }
            for k in range(2)
            for j in range(1, 6)
        ]
        r = c.post("/v1/session-states", json=states, headers=auth(csms))
        assert r.status_code == 200 and r.json()["stored"] == 10, r.text
        r = c.put(
            f"/v1/dso/region-01/profiles/{day}",
            json={"cap_kw": [15.0] * _slots(day), "target_kw": [5.0] * _slots(day)},
            headers=auth(dso),
        )
        assert r.status_code == 200, r.text
        run = c.post("/v1/schedule-runs", headers=auth(operator)).json()
        assert run["published"], run
        before = c.get("/v1/profiles?changed_since=0", headers=auth(csms)).json()
        assert {p["session_id"] for p in before["profiles"]} == {"sess-0", "sess-1"}

        srv.kill()  # kill -9 mid-day
        c.close()
        srv = ServerProcess(db_url, env).start()
        c = httpx.Client(base_url=srv.url, timeout=30)

        topo = c.get("/v1/topology", headers=auth(operator)).json()
        assert [s["id"] for s in topo["stations"]] == ["st-00001"]
        after = c.get("/v1/profiles?changed_since=0", headers=auth(csms)).json()
        # every published profile is still there; the restarted service re-plans at once, and
        # its cold solve may pick another optimum of the same LP: then the session's profile
        # comes from a later run with a later cursor, never an older or missing one
        old = {p["session_id"]: p for p in before["profiles"]}
        new = {p["session_id"]: p for p in after["profiles"]}
        assert set(new) == set(old)
        for sid, p in new.items():
            if p["cursor"] == old[sid]["cursor"]:
                assert p == old[sid]
            else:
                assert p["cursor"] > old[sid]["cursor"] and p["run_id"] > old[sid]["run_id"]
        dsop = c.get(f"/v1/dso/region-01/profiles/{day}", headers=auth(dso)).json()
        assert dsop["cap_kw"] == [15.0] * _slots(day)
        # states survived: sending them again finds every one already stored
        again = c.post("/v1/session-states", json=states, headers=auth(csms)).json()
        assert again["stored"] == 0 and again["duplicates"] == 10
        # scheduling resumes: the restarted service re-plans (once at start) and on request
        deadline = time.monotonic() + 30
        latest = c.get("/v1/schedule-runs/latest", headers=auth(operator)).json()
        while latest.get("run", latest.get("id")) == run["run"] and time.monotonic() < deadline:
            time.sleep(0.2)
            latest = c.get("/v1/schedule-runs/latest", headers=auth(operator)).json()
        assert latest.get("run", latest.get("id")) != run["run"]
        new = c.post("/v1/schedule-runs", headers=auth(operator)).json()
        assert new["published"] and new["sessions"] == 2
    finally:
        c.close()
        srv.stop()


def _slots(day: str) -> int:
    from datetime import date

    tz = ZoneInfo("Europe/Amsterdam")
    d = date.fromisoformat(day)
    a = datetime(d.year, d.month, d.day, tzinfo=tz)
    b = datetime.combine(d + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return int((b.astimezone(UTC) - a.astimezone(UTC)).total_seconds() // 900)
