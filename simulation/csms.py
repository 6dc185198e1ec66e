"""A CSMS simulator that drives the real service through HTTP for one simulated day.

It plays a generated scenario against a running gridcharge service, as a CPO platform would:

- the operator loads the topology, the DSO submits its day profile (cap and target);
- each car plugs in (OCPI ``PUT`` Session), states its departure and energy need (OCPI
  ``charging_preferences``), and then sends a meter state every 5 minutes **on its own clock**
  from plug-in (bulk ``POST /v1/session-states``), the currents following the charging profile
  it last received, until it is full or leaves (OCPI ``PATCH`` COMPLETED);
- every 15 minutes of simulated time the operator asks the service to re-plan at that instant
  (``POST /v1/schedule-runs?at=``), and the CSMS fetches the changed profiles
  (``GET /v1/profiles?changed_since=``).

Before its first profile arrives a car charges at its connector's limit, as a station does today.
Physics runs on a 1-minute grid: a car draws ``min(profile limit, connector limit)`` per phase
until its need is met.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

STATE_EVERY = timedelta(minutes=5)
TICK = timedelta(minutes=5)
PLAN_EVERY = timedelta(minutes=15)


def _z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SimCar:
    """One session as the CSMS sees it."""

    id: str
    connector: str
    arrival: datetime
    departure: datetime
    need_kwh: float
    kw_per_a: float
    max_a: float
    delivered_kwh: float = 0.0
    current_a: float = 0.0
    next_state: datetime | None = None
    started: bool = False
    ended: bool = False
    profile_t: list[datetime] = field(default_factory=list)
    profile_a: list[float] = field(default_factory=list)
    profile_end: datetime | None = None

    def limit_a(self, t: datetime) -> float:
        """The limit in force at ``t`` from the last profile, else the connector limit."""
        if not self.profile_t or t < self.profile_t[0]:
            return self.max_a
        if self.profile_end is not None and t >= self.profile_end:
            return self.max_a
        k = bisect.bisect_right(self.profile_t, t) - 1
        return min(self.profile_a[k], self.max_a)

    def drop_profile(self) -> None:
        """A cleared profile (the session ended): back to the connector limit."""
        self.profile_t, self.profile_a, self.profile_end = [], [], None

    def take_profile(self, ocpi: dict[str, Any]) -> None:
        start = datetime.fromisoformat(ocpi["start_date_time"].replace("Z", "+00:00"))
        periods = ocpi["charging_profile_period"]
        self.profile_t = [start + timedelta(seconds=p["start_period"]) for p in periods]
        self.profile_a = [float(p["limit"]) for p in periods]
        dur = ocpi.get("duration")
        self.profile_end = start + timedelta(seconds=dur) if dur else None


@dataclass
class DrEvent:
    """A demand-response signal during the simulated day and the operator's decision.

    ``decision``: ``relay`` or ``reject``. The signal is sent at ``at`` (a multiple of the
    simulator's 5-minute tick after the grid start).
    """

    at: datetime
    decision: str
    target_kw: float | None = None
    reason: str = "supplier short in this settlement period"
    result: dict[str, Any] = field(default_factory=dict)


class CsmsSimulator:
    """Drive one simulated day of ``scenario`` through the service at ``base_url``.

    With ``dr_events`` the supplier's signals arrive during the day (operator key, sent with
    ``at``); the operator relays or rejects each, the cars take their curtailment profiles from
    the profile feed at once, and the restores due are published before each re-plan.
    """

    def __init__(
        self,
        base_url: str,
        keys: dict[str, str],
        scenario: dict[str, Any],
        timeout_s: float = 60,
        dr_events: list[DrEvent] | None = None,
    ) -> None:
        self.dr_events = sorted(dr_events or [], key=lambda e: e.at)
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self.keys = keys
        self.sc = scenario
        self.cursor = 0
        self.calls = 0
        v = float(scenario.get("voltage_v", 230.0))
        conn = {c["id"]: c for s in scenario["stations"] for c in s["connectors"]}
        self.cars: list[SimCar] = []
        for s in scenario["sessions"]:
            c = conn[s["connector"]]
            phases = min(int(s.get("phases", 3)), int(c.get("phases", 3)))
            arrival = datetime.fromisoformat(s["arrival"])
            self.cars.append(
                SimCar(
                    id=s["id"],
                    connector=s["connector"],
                    arrival=arrival,
                    departure=datetime.fromisoformat(s["departure"]),
                    need_kwh=float(s.get("energy_kwh") or 0.0),
                    kw_per_a=phases * v / 1000.0,
                    max_a=float(c.get("limit_a", 16.0)),
                    next_state=arrival + STATE_EVERY,
                )
            )
        self.by_id = {c.id: c for c in self.cars}
        grid_start = datetime.fromisoformat(scenario["grid"]["start"])
        for car in self.cars:  # a car plugged in before the day reports on its clock from then
            if car.arrival < grid_start:
                k = -(-(grid_start - car.arrival) // STATE_EVERY)
                car.next_state = car.arrival + k * STATE_EVERY

    def close(self) -> None:
        self.http.close()

    # -- HTTP ------------------------------------------------------------------------------
    def _call(self, method: str, url: str, role: str, **kw: Any) -> httpx.Response:
        self.calls += 1
        r = self.http.request(
            method, url, headers={"Authorization": f"Token {self.keys[role]}"}, **kw
        )
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {url} -> {r.status_code}: {r.text[:300]}")
        return r

    def load_grid(self) -> None:
        """Topology (operator) and the DSO's day profile per region."""
        self._call(
            "PUT",
            "/v1/topology",
            "operator",
            json={"nodes": self.sc["nodes"], "stations": self.sc["stations"]},
        )
        start = datetime.fromisoformat(self.sc["grid"]["start"])
        day = start.date().isoformat()
        for p in self.sc.get("dso_profiles", []):
            body = {k: p[k] for k in ("cap_kw", "target_kw") if p.get(k) is not None}
            self._call("PUT", f"/v1/dso/{p['node']}/profiles/{day}", "dso", json=body)

    def _plug_in(self, car: SimCar) -> None:
        from api.sessions import SESSION_EXAMPLE

        body = dict(SESSION_EXAMPLE)  # the CSMS's static fields (token, location, currency)
        body.update(
            id=car.id,
            evse_uid=car.connector,
            start_date_time=_z(car.arrival),
            last_updated=_z(car.arrival),
            kwh=0.0,
            status="ACTIVE",
            location_id=car.connector.rsplit("-", 1)[0][:36],
        )
        self._call("PUT", f"/ocpi/2.2.1/sessions/NL/GCP/{car.id}", "csms", json=body)
        prefs = {
            "profile_type": "REGULAR",
            "departure_time": _z(car.departure),
            "energy_need": round(car.need_kwh, 3),
        }
        self._call(
            "PUT", f"/ocpi/2.2.1/sessions/NL/GCP/{car.id}/charging_preferences", "csms", json=prefs
        )
        car.started = True

    def _leave(self, car: SimCar) -> None:
        body = {
            "status": "COMPLETED",
            "end_date_time": _z(car.departure),
            "last_updated": _z(car.departure),
            "kwh": round(car.delivered_kwh, 4),
        }
        self._call("PATCH", f"/ocpi/2.2.1/sessions/NL/GCP/{car.id}", "csms", json=body)
        car.ended = True

    def _take_profiles(self) -> None:
        """Read the profile feed from the last cursor and apply it to the cars."""
        more = True
        while more:
            page = self._call(
                "GET", "/v1/profiles", "csms", params={"changed_since": self.cursor, "limit": 1000}
            ).json()
            for p in page["profiles"]:
                car = self.by_id.get(p["session_id"])
                if car is None:
                    continue
                if p.get("cleared"):  # the session ended: its profile is no longer in force
                    car.drop_profile()
                else:
                    car.take_profile(p["ocpi"])
            self.cursor, more = page["cursor"], page["more"]

    def _demand_response(self, t: datetime) -> None:
        """Signals due at ``t`` (sent, then relayed or rejected) and the restores due."""
        at = {"at": t.isoformat()}
        self._call("POST", "/v1/demand-response/restore", "operator", params=at)
        for ev in self.dr_events:
            if ev.result or ev.at > t:
                continue
            body: dict[str, Any] = {"reason": ev.reason}
            if ev.target_kw is not None:
                body["target_kw"] = ev.target_kw
            sig = self._call(
                "POST", "/v1/demand-response/signals", "operator", params=at, json=body
            ).json()["signal"]
            ev.result = self._call(
                "POST",
                f"/v1/demand-response/signals/{sig['id']}/{ev.decision}",
                "operator",
                params=at,
                json={"reason": f"demo: {ev.decision}"},
            ).json()
        self._take_profiles()

    def _plan(self, at: datetime) -> dict[str, Any]:
        run = self._call("POST", "/v1/schedule-runs", "operator", params={"at": at.isoformat()})
        self._take_profiles()
        result: dict[str, Any] = run.json()
        return result

    # -- the day -----------------------------------------------------------------------------
    def run_day(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Simulate the scenario's grid from start to end; returns counters and the runs."""
        self.load_grid()
        start = datetime.fromisoformat(self.sc["grid"]["start"]).astimezone(UTC)
        steps = int(self.sc["grid"]["steps"]) * int(self.sc["grid"]["step_s"])
        end = start + timedelta(seconds=steps)
        t = start
        runs: list[dict[str, Any]] = []
        states_sent = 0
        ticks = int((end - start) / TICK)
        left = False
        for k in range(ticks):
            # plug-ins up to t; cars already plugged in at the start arrive at once
            changed = False
            for car in self.cars:
                if not car.started and car.arrival <= t and car.departure > start:
                    self._plug_in(car)
                    changed = True
            if self.dr_events:
                self._demand_response(t)
            # re-plan on every arrival or departure (as the service's event loop does) and at
            # least every 15 minutes
            if changed or left or (t - start) % PLAN_EVERY == timedelta(0):
                runs.append(self._plan(t))
            t_next = t + TICK
            states_sent += self._advance(t, t_next)
            left = False
            for car in self.cars:
                if car.started and not car.ended and car.departure <= t_next:
                    self._leave(car)
                    left = True
            t = t_next
            if progress:
                progress(k + 1, ticks)
        return {
            "runs": runs,
            "states": states_sent,
            "calls": self.calls,
            "sessions": sum(c.started for c in self.cars),
        }

    def _advance(self, t0: datetime, t1: datetime) -> int:
        """Charge every plugged-in car from t0 to t1 minute by minute; send its due states."""
        active = [c for c in self.cars if c.started and not c.ended]
        states: list[dict[str, Any]] = []
        minute = timedelta(minutes=1)
        t = t0
        while t < t1:
            for car in active:
                if not (car.arrival <= t < car.departure):
                    car.current_a = 0.0
                    continue
                left = car.need_kwh - car.delivered_kwh
                if left <= 1e-9:
                    car.current_a = 0.0
                    continue
                i = car.limit_a(t)
                e = min(i * car.kw_per_a / 60.0, left)
                car.current_a = e * 60.0 / car.kw_per_a
                car.delivered_kwh += e
            t += minute
            for car in active:
                if (
                    car.next_state is not None
                    and car.next_state <= t
                    and car.next_state < car.departure
                ):
                    phase_a = round(car.current_a, 2)
                    states.append(
                        {
                            "session_id": car.id,
                            "timestamp": _z(car.next_state),
                            "kwh": round(car.delivered_kwh, 4),
                            "current_a": [phase_a] * 3
                            if car.kw_per_a > 0.3
                            else [phase_a, 0.0, 0.0],
                            "phases": 3 if car.kw_per_a > 0.3 else 1,
                        }
                    )
                    car.next_state += STATE_EVERY
        for chunk in range(0, len(states), 5000):
            self._call("POST", "/v1/session-states", "csms", json=states[chunk : chunk + 5000])
        return len(states)

    def delivered(self) -> dict[str, tuple[float, float]]:
        """Per session: (energy delivered, energy needed) [kWh]."""
        return {c.id: (c.delivered_kwh, c.need_kwh) for c in self.cars if c.started}


def served_share(delivered: dict[str, tuple[float, float]]) -> float:
    """Share of sessions that got their need (within 10 Wh)."""
    got = np.array([d >= n - 0.01 for d, n in delivered.values()])
    return float(got.mean()) if got.size else 1.0
