"""Demand-response benchmark: signal to curtailment profiles for 16,000 active sessions.

1. **In process** (target ≤ 50 ms): :func:`optimizer.fastpath.activate` on 16,000 sessions
   (eligibility, rolling 4-hour budgets with an earlier-curtailment log, restore times, released
   power), median of repeated runs; then rendering the three profile forms (OCPP 1.6, OCPP
   2.0.1, OCPI) of every curtailed session. The reference solved in the same run is the same
   decision written as a per-session Python loop, so the ratio is comparable across machines.
2. **Through HTTP** (target ≤ 1 s): ``gridcharge serve`` (SQLite, and PostgreSQL with
   ``--pg-url``; background loops off) with a
   16,000-connector topology, 16,000 active sessions and their published profiles (seeded
   once); ``--http-repeat`` times (default 3), on a fresh copy of that database and a fresh
   server each time, one ``POST /v1/demand-response/signals`` with auto-relay on, timed at the
   client: it reads the fleet, decides, and commits the activation, the curtailments, the
   profiles, the profile changes and the outbox items in one transaction. The table gives the
   request of median time, the times of all of them, and the median one's server steps
   (``timings_ms`` in the answer). Three cases per database: every curtailment shape shared,
   every published profile distinct, and every profile distinct and republished after the
   server read them (none taken from its cache, ``api/published.py``: the moment right after a
   re-plan). The seeded PostgreSQL database is analysed, as autovacuum would have done.

Results are appended to ``docs/BENCHMARKS.md`` and ``docs/benchmarks.json``.

Usage: ``python -m benchmarks.dr [--sessions 16000] [--repeat 20] [--http-repeat 3]
[--pg-url URL] [--no-record]``
(``URL`` of a PostgreSQL server where the benchmark may create and drop a database; defaults to
``$GRIDCHARGE_TEST_DATABASE_URL``; ``--no-record`` prints the table without appending it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.run import append_results, machine

SIGNAL_AT = datetime(2026, 11, 18, 17, 6, 40, tzinfo=UTC)


def synthetic_fleet(n: int, seed: int = 1) -> dict[str, Any]:
    """Arrays of ``n`` active sessions: currents 6-16 A, 10 % single-phase, 5 % opt-out, half of
    them under a consent rule with 60 % consenting, and a third curtailed once or twice in the
    last 4 hours."""
    rng = np.random.default_rng(seed)
    n_log = n // 3
    log_session = np.sort(rng.choice(n, size=n_log + n // 10, replace=True))
    start = -rng.uniform(600, 14000, log_session.size)
    return {
        "signal_at": SIGNAL_AT,
        "i_now_a": rng.uniform(6.0, 16.0, n),
        "min_a": np.full(n, 8.0),
        "n_phases": np.where(rng.random(n) < 0.1, 1.0, 3.0),
        "voltage_v": 230.0,
        "opt_out": rng.random(n) < 0.05,
        "consent_required": rng.random(n) < 0.5,
        "consent": rng.random(n) < 0.6,
        "budget_s": np.full(n, 1800.0),
        "log_session": log_session,
        "log_start_s": start,
        "log_end_s": start + rng.uniform(60, 600, log_session.size),
        "n_curtailed": rng.integers(0, 3, n),
    }


def loop_reference(kw: dict[str, Any]) -> float:
    """The same decision as a per-session Python loop (no partial target); returns the total
    released power [kW]."""
    from optimizer.fastpath import WINDOW_S, restore_time

    at = kw["signal_at"]
    horizon = (restore_time(at) - at).total_seconds()
    logs: dict[int, list[tuple[float, float]]] = {}
    for s, a, b in zip(kw["log_session"], kw["log_start_s"], kw["log_end_s"], strict=True):
        logs.setdefault(int(s), []).append((float(a), float(b)))
    total = 0.0
    for s in range(kw["i_now_a"].size):
        if kw["opt_out"][s] or (kw["consent_required"][s] and not kw["consent"][s]):
            continue
        if kw["i_now_a"][s] <= kw["min_a"][s] + 1e-3:
            continue
        budget = float(kw["budget_s"][s])
        x = horizon
        while x > 0:  # whole seconds down from the horizon
            used = sum(max(0.0, min(b, 0.0) - max(a, x - WINDOW_S)) for a, b in logs.get(s, []))
            if x + used <= budget:
                break
            x -= 1.0
        if x < min(60.0, horizon):
            continue
        total += (kw["i_now_a"][s] - kw["min_a"][s]) * kw["n_phases"][s] * kw["voltage_v"] / 1e3
    return total


def bench_in_process(n: int, repeat: int) -> dict[str, Any]:
    from api.dr import curtailment_forms
    from optimizer.fastpath import activate

    kw = synthetic_fleet(n)
    activate(**kw)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        act = activate(**kw)
        times.append(time.perf_counter() - t0)
    fast_ms = statistics.median(times) * 1e3
    t0 = time.perf_counter()
    ref_kw = loop_reference(kw)
    ref_ms = (time.perf_counter() - t0) * 1e3
    chosen = np.flatnonzero(act.chosen)
    t0 = time.perf_counter()
    for k in chosen.tolist():
        curtailment_forms(
            session_id=f"s-{k:06d}",
            evse_id=1 + k % 2,
            n_phases=int(kw["n_phases"][k]),
            start=SIGNAL_AT,
            until=act.until(k),
            limit_a=float(kw["min_a"][k]),
            previous=None,
        )
    render_ms = (time.perf_counter() - t0) * 1e3
    from api.dr_batch import render_batch

    t0 = time.perf_counter()
    render_batch(
        start=SIGNAL_AT,
        until_s=SIGNAL_AT.timestamp() + act.duration_s[chosen],
        limit_a=kw["min_a"][chosen],
        n_phases=kw["n_phases"][chosen].astype(np.int64),
        previous=[None] * int(chosen.size),
        voltage_v=kw["voltage_v"],
        step_s=900,
    )
    batch_ms = (time.perf_counter() - t0) * 1e3
    return {
        "sessions": n,
        "curtailed": int(chosen.size),
        "released_kw": round(act.released_kw, 1),
        "reference_released_kw": round(float(ref_kw), 1),
        "fastpath_ms": round(fast_ms, 2),
        "loop_reference_ms": round(ref_ms, 1),
        "speedup_vs_loop": round(ref_ms / fast_ms, 1),
        "render_forms_ms": round(render_ms, 1),
        "render_batch_ms": round(batch_ms, 1),
    }


def seed_database(url: str, n: int, now: datetime, distinct: bool = False) -> dict[str, str]:
    """Topology of ``n`` connectors, one active session on each (6-16 A now) and a published
    profile per session; returns API keys.

    The published profile holds the session's current for 4 hours; with ``distinct`` it
    changes every 15 minutes (random 6-32 A), so no two sessions share a curtailment shape
    (the worst case for :func:`api.dr.run_activation`, which renders each shape once)."""
    from sqlalchemy import insert

    from api.db import Base, make_engine, make_sessionmaker, migrate, transaction
    from api.dr import curtailment_forms
    from api.models import ChargingSession, Profile, ProfileChange
    from api.publish import step_limits_a
    from api.security import create_key
    from api.topology import upsert_topology
    from simulation.fleet import generate_scenario

    migrate(url)
    raw = generate_scenario(stations=n // 2, seed=1, feasible=False)
    rng = np.random.default_rng(2)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:
        keys = {r: create_key(db, r) for r in ("operator", "brp")}
        upsert_topology(db, {"nodes": raw["nodes"], "stations": raw["stations"]})
    conns = [(c["id"], j + 1) for s in raw["stations"] for j, c in enumerate(s["connectors"])][:n]
    start = now - timedelta(hours=1)
    grid = datetime.fromtimestamp(now.timestamp() // 900 * 900, UTC)
    rows, profiles, changes = [], [], []
    for k, (cid, pos) in enumerate(conns):
        sid = f"b-{k:06d}"
        i_a = float(rng.uniform(6.0, 16.0))
        rows.append(
            {
                "id": sid,
                "country_code": "NL",
                "party_id": "GCP",
                "connector_id": cid,
                "start_date_time": start,
                "status": "ACTIVE",
                "kwh": 5.0,
                "current_a": i_a,
                "phases": 3,
                "departure": now + timedelta(hours=3),
                "opt_out": False,
                "pause_consent": False,
                "last_updated": now,
                "raw": {},
            }
        )
        previous = None
        if distinct:
            limits = [round(float(x), 1) for x in rng.uniform(6.0, 32.0, 16)]
            previous = {
                "start_date_time": grid.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duration": 4 * 3600,
                "charging_rate_unit": "A",
                "min_charging_rate": 6.0,
                "charging_profile_period": [
                    {"start_period": 900 * j, "limit": lim} for j, lim in enumerate(limits)
                ],
            }
        forms = curtailment_forms(
            session_id=sid,
            evse_id=pos,
            n_phases=3,
            start=grid,
            until=grid + timedelta(minutes=15) if distinct else grid + timedelta(hours=4),
            limit_a=round(i_a, 1),
            previous=previous,
        )
        profiles.append(
            {
                "session_id": sid,
                "cursor": k + 1,
                "run_id": 1,
                "limits_a": step_limits_a(forms["ocpi"], 900),
                "ocpi": forms["ocpi"],
                "evse_id": pos,
                "n_phases": 3,
                "updated_at": now,
            }
        )
        changes.append({"session_id": sid, "run_id": 1, "created_at": now})
    with transaction(factory) as db:
        db.execute(insert(ChargingSession), rows)
        db.execute(insert(ProfileChange), changes)
        db.execute(insert(Profile), profiles)
    if engine.dialect.name == "postgresql":
        # the planner's statistics, as autovacuum keeps them in a running service: a database
        # copied right after its seeding has none, and the planner then joins 16,000 sessions
        # to their connectors and stations by nested loops (twice the time of the hash joins)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in Base.metadata.sorted_tables:
                conn.exec_driver_sql(f'ANALYZE "{table.name}"')
    engine.dispose()
    return keys


def _admin(pg_url: str, sql: str) -> None:
    """Run ``sql`` (CREATE/DROP DATABASE) on the PostgreSQL server of ``pg_url``, outside a
    transaction."""
    from sqlalchemy import create_engine, text

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(sql))
    finally:
        admin.dispose()


def _copy_database(source: str, pg_url: str | None, k: int) -> str:
    """A fresh copy of the seeded database ``source`` (PostgreSQL: ``CREATE DATABASE ...
    TEMPLATE``; SQLite: the file through SQLite's backup API); returns its URL."""
    if pg_url:
        template = source.rsplit("/", 1)[1]
        name = f"{template}_{k}"
        _admin(pg_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return pg_url.rsplit("/", 1)[0] + f"/{name}"
    import sqlite3
    from contextlib import closing

    path = Path(source.removeprefix("sqlite:///"))
    copy = path.with_name(f"dr_{k}.db")
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    return f"sqlite:///{copy}"


def _drop_database(url: str, pg_url: str | None) -> None:
    """Drop a benchmark database (SQLite: its file and the WAL beside it)."""
    if not pg_url:
        path = Path(url.removeprefix("sqlite:///"))
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
        return
    _admin(pg_url, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}"')


def _republish(url_db: str) -> None:
    """Give every published profile a new cursor with its ``profile_changes`` row, as a
    publisher does (the rows rewritten, the cursors above every earlier one)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url_db)
    with eng.begin() as conn:
        top = conn.execute(text("SELECT coalesce(max(cursor), 0) FROM profile_changes")).scalar()
        conn.execute(text("UPDATE profiles SET cursor = cursor + :top"), {"top": top})
        conn.execute(
            text(
                "INSERT INTO profile_changes (cursor, session_id, run_id, created_at) "
                "SELECT cursor, session_id, run_id, updated_at FROM profiles WHERE cursor > :top"
            ),
            {"top": top},
        )
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('profile_changes', 'cursor'), "
                    "(SELECT max(cursor) FROM profile_changes))"
                )
            )
    eng.dispose()


def _one_request(url_db: str, keys: dict[str, str], republished: bool = False) -> dict[str, Any]:
    """A server on ``url_db`` (background loops off, a CPO URL set so outbox items are
    written), auto-relay on, one signal timed at the client. ``republished``: after the
    server has read the published profiles (``api/published.py``), every one gets a new
    cursor, as when a re-plan has just republished them all, so none is taken from the
    service's cache."""
    from sqlalchemy import create_engine, text

    from optimizer.demo import start_service

    os.environ["GRIDCHARGE_CPO_URL"] = "http://127.0.0.1:9/ocpi/cpo/2.2.1/chargingprofiles"
    try:
        proc, url = start_service(url_db, background=False)
    finally:
        os.environ.pop("GRIDCHARGE_CPO_URL", None)
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            h_op = {"Authorization": f"Token {keys['operator']}"}
            h_brp = {"Authorization": f"Token {keys['brp']}"}
            c.put(
                "/v1/demand-response/policy", json={"auto_relay": True}, headers=h_op
            ).raise_for_status()
            if republished:
                _republish(url_db)
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = c.post("/v1/demand-response/signals", json={"reason": "bench"}, headers=h_brp)
            wall_ms = (time.perf_counter() - t0) * 1e3
            load_after = os.getloadavg()[0]
            r.raise_for_status()
            out = r.json()
    finally:
        proc.terminate()
        proc.wait(30)
    eng = create_engine(url_db)
    with eng.connect() as conn:
        outbox = conn.execute(text("SELECT count(*) FROM outbox")).scalar()
        detail = conn.execute(
            text("SELECT detail FROM dr_audit_log WHERE action = 'relay' ORDER BY id DESC")
        ).scalar()
    eng.dispose()
    cached = (json.loads(detail) if isinstance(detail, str) else detail or {}).get(
        "profiles_cached"
    )
    return {
        "load_1min": [round(load_before, 2), round(load_after, 2)],
        "curtailed": out["sessions_curtailed"],
        "skipped": out["skipped"],
        "released_kw": out["released_kw"],
        "http_ms": round(wall_ms, 1),
        "server_ms": round(out["activation"]["time_s"] * 1e3, 1),
        "committed_ms": round(out.get("committed_s", out["activation"]["time_s"]) * 1e3, 1),
        "steps_ms": out.get("timings_ms", {}),
        "outbox_items": outbox,
        "profiles_cached": cached,
    }


def bench_http(
    n: int,
    pg_url: str | None = None,
    distinct: bool = False,
    repeat: int = 3,
    republished: bool = False,
) -> dict[str, Any]:
    """``repeat`` signals through HTTP, each on a fresh copy of one seeded database: a new
    SQLite file, or with ``pg_url`` (an existing PostgreSQL server, e.g. from
    ``.ci/postgres.sh``) a new database there; ``distinct``: every session has its own
    published profile (see :func:`seed_database`); ``republished``: see :func:`_one_request`.
    The row is the request of median client wall time, with the times of all of them."""
    if repeat < 1:
        raise ValueError(f"repeat: at least one request (got {repeat})")
    tmp = None
    if pg_url:
        import uuid

        name = f"gc_drbench_{uuid.uuid4().hex[:8]}"
        _admin(pg_url, f'CREATE DATABASE "{name}"')
        seeded = pg_url.rsplit("/", 1)[0] + f"/{name}"
    else:
        tmp = Path(tempfile.mkdtemp())
        seeded = f"sqlite:///{tmp / 'dr.db'}"
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    keys = seed_database(seeded, n, now, distinct)
    seed_s = time.perf_counter() - t0
    samples = []
    try:
        for k in range(repeat):
            url_db = _copy_database(seeded, pg_url, k)
            try:
                samples.append(_one_request(url_db, keys, republished))
            finally:
                _drop_database(url_db, pg_url)
    finally:
        _drop_database(seeded, pg_url)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    times = [s["http_ms"] for s in samples]
    median = sorted(samples, key=lambda s: s["http_ms"])[(len(samples) - 1) // 2]
    return {
        "database": ("postgresql" if pg_url else "sqlite")
        + (", every profile distinct" if distinct else "")
        + (", republished after the start (none cached)" if republished else ""),
        "sessions": n,
        "seed_s": round(seed_s, 1),
        **median,
        "http_ms_all": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=16000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument(
        "--http-repeat",
        type=int,
        default=3,
        help="requests per database and case, each on a fresh copy of the seeded database",
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("GRIDCHARGE_TEST_DATABASE_URL"),
        help="PostgreSQL server for a second HTTP run (default: $GRIDCHARGE_TEST_DATABASE_URL)",
    )
    ap.add_argument(
        "--no-record",
        action="store_true",
        help="print the results only (docs/BENCHMARKS.md and docs/benchmarks.json unchanged)",
    )
    args = ap.parse_args()
    proc_row = bench_in_process(args.sessions, args.repeat)
    print(json.dumps(proc_row), flush=True)
    http_rows = []
    for pg_url in [None, args.pg_url] if args.pg_url else [None]:
        for distinct, republished in ((False, False), (True, False), (True, True)):
            http_rows.append(
                bench_http(args.sessions, pg_url, distinct, args.http_repeat, republished)
            )
            print(json.dumps(http_rows[-1]), flush=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    lines = [
        f"### Demand response, run {when}\n",
        f"Machine: {where}. {args.sessions:,} active sessions. Targets: in process ≤ 50 ms; "
        "through HTTP incl. persistence and outbox ≤ 1 s. Reference in the same run: the "
        "same decision as a per-session Python loop.\n",
        "| step | sessions curtailed | time ms | ratio |",
        "|---|---|---|---|",
        f"| fast path (`activate`, median of {args.repeat}) | {proc_row['curtailed']:,} | "
        f"{proc_row['fastpath_ms']} | 1 |",
        f"| per-session loop reference | {proc_row['curtailed']:,} | "
        f"{proc_row['loop_reference_ms']} | {proc_row['speedup_vs_loop']} × slower |",
        f"| render OCPP 1.6 / 2.0.1 / OCPI forms | {proc_row['curtailed']:,} | "
        f"{proc_row['render_forms_ms']} | |",
        f"| the stored texts (OCPI form, step limits), whole activation at once "
        f"(`render_batch`) | "
        f"{proc_row['curtailed']:,} | {proc_row['render_batch_ms']} | "
        f"{proc_row['render_batch_ms'] / proc_row['fastpath_ms']:.0f} × fast path |",
    ]
    for row in http_rows:
        db = row["database"]
        ratio = row["http_ms"] / proc_row["fastpath_ms"]
        spread = ", ".join(f"{t:.0f}" for t in sorted(row["http_ms_all"]))
        lines += [
            f"| HTTP `POST /v1/demand-response/signals` on {db}, committed (client wall, "
            f"median of {len(row['http_ms_all'])} requests: {spread} ms) | "
            f"{row['curtailed']:,} | {row['http_ms']} | {ratio:.0f} × fast path |",
            f"| of which in the server, signal to committed ({db}) | {row['curtailed']:,} | "
            f"{row['committed_ms']} | |",
            f"| of which before the commit (read fleet, decide, write; {db}) | "
            f"{row['curtailed']:,} | {row['server_ms']} | |",
        ]
        if row.get("steps_ms"):
            steps = ", ".join(f"{k} {v:.0f}" for k, v in row["steps_ms"].items())
            lines.append(f"| steps in the server ({db}): {steps} | | | |")
    loads = "; ".join(
        f"{r['database']} {r['load_1min'][0]} before / {r['load_1min'][1]} after" for r in http_rows
    )
    lines += [
        "",
        f"Released: {proc_row['released_kw']:,} kW in process (loop reference "
        f"{proc_row['reference_released_kw']:,} kW); "
        + "; ".join(
            f"{r['released_kw']:,} kW through HTTP on {r['database']} with "
            f"{r['outbox_items']:,} outbox items written and "
            f"{r['profiles_cached'] or 0:,} published profiles taken from the service's cache"
            for r in http_rows
        )
        + f". Load average (1 min) around the HTTP request: {loads} (on {os.cpu_count()} cores).",
    ]
    if args.no_record:
        print("\n".join(lines))
        return
    append_results(
        "\n".join(lines),
        {
            "when": when,
            "machine": where,
            "dr": {"in_process": proc_row, "http": http_rows[0], "http_all": http_rows},
        },
    )


if __name__ == "__main__":
    main()
