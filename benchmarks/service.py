"""Service load benchmark: session-state throughput and latency over loopback.

Starts ``gridcharge serve`` (SQLite) in its own process, loads a 16,000-connector topology and
16,000 active sessions, then drives load from a separate process:

1. **bulk**: ``POST /v1/session-states`` with batches of 1,000 states, back to back, for a fixed
   time: sustained states per second (target ≥ 2,000 on 2 cores);
2. **single**: OCPI ``PATCH`` of one session with a new cumulative kWh at 500 requests per
   second from 4 pacing client processes: latency from each request's scheduled time,
   percentiles (target p99 < 100 ms).

Each load runs twice: with the background scheduler off (the reference), and on (it re-plans
all sessions every ``--replan-every`` seconds while the states arrive). Besides latency, the
server's CPU per single update and the re-plans finished during the loads are reported. Results
are appended to ``docs/BENCHMARKS.md`` and ``docs/benchmarks.json``.

Usage: ``python -m benchmarks.service [--sessions 16000] [--seconds 20] [--workers 2]
[--postgres URL] [--replan-every 10]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.run import append_results, machine

T0 = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)


def _z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def seed_service(url: str, keys: dict[str, str], sessions: int) -> list[str]:
    """Topology for ``sessions`` connectors and one active session on each."""
    from api.sessions import SESSION_EXAMPLE
    from simulation.fleet import generate_scenario

    raw = generate_scenario(stations=sessions // 2, seed=1, feasible=False)
    h_op = {"Authorization": f"Token {keys['operator']}"}
    h_cs = {"Authorization": f"Token {keys['csms']}"}
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.put(
            "/v1/topology", json={"nodes": raw["nodes"], "stations": raw["stations"]}, headers=h_op
        )
        r.raise_for_status()
        ids = []
        conns = [cn["id"] for s in raw["stations"] for cn in s["connectors"]][:sessions]
        for k, cid in enumerate(conns):
            sid = f"b-{k:06d}"
            body = dict(SESSION_EXAMPLE)
            body.update(
                id=sid,
                evse_uid=cid,
                start_date_time=_z(T0),
                last_updated=_z(T0),
                kwh=0.0,
                status="ACTIVE",
            )
            c.put(f"/ocpi/2.2.1/sessions/NL/GCP/{sid}", json=body, headers=h_cs).raise_for_status()
            ids.append(sid)
    return ids


def load_bulk(url: str, key: str, ids: list[str], seconds: float, out: Any) -> None:
    """Back-to-back batches of 1,000 states with increasing timestamps (separate process)."""
    h = {"Authorization": f"Token {key}"}
    sent = 0
    lat: list[float] = []
    step = 0
    with httpx.Client(base_url=url, timeout=60) as c:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            step += 1
            ts = _z(T0 + timedelta(seconds=step))
            for i in range(0, len(ids), 1000):
                batch = [
                    {
                        "session_id": s,
                        "timestamp": ts,
                        "kwh": 0.01 * step,
                        "current_a": [16.0, 16.0, 16.0],
                        "phases": 3,
                    }
                    for s in ids[i : i + 1000]
                ]
                t0 = time.perf_counter()
                r = c.post("/v1/session-states", json=batch, headers=h)
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                sent += len(batch)
                if time.perf_counter() >= t_end:
                    break
            elapsed = seconds - max(t_end - time.perf_counter(), 0)
    out.put(
        {
            "states": sent,
            "seconds": round(elapsed, 2),
            "states_per_s": round(sent / elapsed, 0),
            "batch_p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
            "batch_p99_ms": round(1000 * float(np.percentile(lat, 99)), 1),
        }
    )


def _single_worker(
    url: str,
    key: str,
    ids: list[str],
    rate: float,
    seconds: float,
    offset: int,
    stride: int,
    out: Any,
) -> None:
    """One pacing client: OCPI PATCHes at ``rate`` per second on one keep-alive connection.

    Latency is measured from each request's *scheduled* time, so a slow answer that delays
    the next request counts against the next one too (no coordinated omission).
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"Token {key}", "Content-Type": "application/json"}
    n = int(rate * seconds)
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    for j in range(n):
        k = offset + j * stride
        scheduled = start + j / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sid = ids[k % len(ids)]
        ts = T0 + timedelta(hours=1, milliseconds=k)
        body = json.dumps({"kwh": 1.0 + k * 1e-6, "last_updated": _z(ts)})
        conn.request("PATCH", f"/ocpi/2.2.1/sessions/NL/GCP/{sid}", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        lat.append(time.perf_counter() - scheduled)
        if resp.status >= 400:
            errors += 1
    elapsed = time.perf_counter() - start
    conn.close()
    out.put({"lat": lat, "errors": errors, "n": n, "elapsed": elapsed})


def load_single(
    url: str, key: str, ids: list[str], rate: float, seconds: float, clients: int, out: Any
) -> None:
    """``clients`` pacing processes sharing ``rate`` requests per second; latency percentiles."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_single_worker,
            args=(url, key, ids, rate / clients, seconds, c, clients, q),
        )
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    parts = [q.get() for _ in procs]
    for p in procs:
        p.join()
    arr = np.array([x for part in parts for x in part["lat"]]) * 1000
    n = sum(part["n"] for part in parts)
    elapsed = max(part["elapsed"] for part in parts)
    out.put(
        {
            "requests": n,
            "clients": clients,
            "rate_target": rate,
            "rate_achieved": round(n / elapsed, 1),
            "errors": sum(part["errors"] for part in parts),
            "p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p95_ms": round(float(np.percentile(arr, 95)), 1),
            "p99_ms": round(float(np.percentile(arr, 99)), 1),
        }
    )


def in_process(target: Any, *args: Any) -> dict[str, Any]:
    """``target(*args, queue)`` in a new process; returns what it put on the queue."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res: dict[str, Any] = q.get()
    p.join()
    return res


def fresh_database(postgres: str | None) -> str:
    """A new empty database: a SQLite file, or a new database on the PostgreSQL server whose
    URL is ``postgres`` (a role that may CREATE DATABASE)."""
    if not postgres:
        return f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    import uuid

    import sqlalchemy as sa

    name = f"gc_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres.rsplit("/", 1)[0] + f"/{name}"


def cpu_s(pid: int) -> float | None:
    """CPU time (user + system) of process ``pid`` so far [s]; None where /proc is absent."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replans_cell(replans: dict[str, Any]) -> str:
    """``runs (mean s)``, or just ``runs`` when none finished."""
    mean = replans["mean_s"]
    return f"{replans['runs']}" if mean is None else f"{replans['runs']} ({mean})"


def scheduler_runs(url_db: str, since: datetime) -> dict[str, Any]:
    """The re-plans finished during the loads: how many, and their mean duration [s]."""
    from sqlalchemy import select

    from api.db import make_engine, make_sessionmaker
    from api.models import ScheduleRun

    engine = make_engine(url_db)
    try:
        with make_sessionmaker(engine)() as db:
            times = list(
                db.scalars(
                    select(ScheduleRun.time_s).where(
                        ScheduleRun.created_at >= since, ScheduleRun.published.is_(True)
                    )
                )
            )
    finally:
        engine.dispose()
    return {"runs": len(times), "mean_s": round(sum(times) / len(times), 2) if times else None}


def bench(
    sessions: int,
    seconds: float,
    background: bool,
    workers: int = 1,
    postgres: str | None = None,
    rate: float = 500.0,
    replan_every_s: float = 10.0,
    clients: int = 4,
) -> dict[str, Any]:
    from api.db import make_engine, make_sessionmaker, migrate, transaction
    from api.security import create_key
    from optimizer.demo import start_service

    url_db = fresh_database(postgres)
    migrate(url_db)
    engine = make_engine(url_db)
    with transaction(make_sessionmaker(engine)) as db:
        keys = {r: create_key(db, r) for r in ("csms", "operator")}
    engine.dispose()
    # a stream of events keeps the debounce waiting; re-plan this often so that re-plans of all
    # sessions run during the loads (the worst case for the requests)
    os.environ["GRIDCHARGE_RESCHEDULE_EVERY_S"] = str(replan_every_s)
    proc, url = start_service(url_db, background=background, workers=workers)
    try:
        t0 = time.perf_counter()
        ids = seed_service(url, keys, sessions)
        seed_s = time.perf_counter() - t0
        t_load = datetime.now(UTC)
        bulk = in_process(load_bulk, url, keys["csms"], ids, seconds)
        cpu0 = cpu_s(proc.pid)
        single = in_process(load_single, url, keys["csms"], ids, rate, seconds, clients)
        cpu1 = cpu_s(proc.pid)
        if cpu0 is not None and cpu1 is not None and workers == 1:
            # the request process only (a scheduler child's CPU is not in it)
            single["server_cpu_ms_per_request"] = round(
                1000 * (cpu1 - cpu0) / single["requests"], 2
            )
        replans = scheduler_runs(url_db, t_load)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "sessions": sessions,
        "database": "postgresql" if postgres else "sqlite",
        "workers": workers,
        "background": background,
        "seed_s": round(seed_s, 1),
        "bulk": bulk,
        "single": single,
        "replans": replans,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=16000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--rate", type=float, default=500.0, help="single updates per second")
    ap.add_argument(
        "--postgres",
        default=None,
        help="PostgreSQL server URL (postgresql+psycopg://USER@HOST:PORT/DB, a role that may "
        "create databases); default: a SQLite file",
    )
    ap.add_argument("--no-background", action="store_true", help="skip the run with it on")
    ap.add_argument(
        "--clients",
        type=int,
        default=4,
        help="pacing client processes (one keep-alive connection each) for the single updates; "
        "with --workers N use several per worker: uvicorn's workers share the listening socket "
        "and a connection stays with the worker that accepted it",
    )
    ap.add_argument(
        "--replan-every",
        type=float,
        default=10.0,
        help="GRIDCHARGE_RESCHEDULE_EVERY_S of the server: with the scheduler on, a re-plan of "
        "every session starts this long after the previous one ended [s]",
    )
    args = ap.parse_args()
    rows = []
    for background in (False,) if args.no_background else (False, True):
        print(f"service benchmark: {args.sessions} sessions, background={background}", flush=True)
        row = bench(
            args.sessions,
            args.seconds,
            background,
            args.workers,
            args.postgres,
            args.rate,
            args.replan_every,
            args.clients,
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    section = [
        f"### Service load, run {when}\n",
        f"Machine: {where}. Server: `gridcharge serve` ({args.workers} worker"
        f"{'s' if args.workers > 1 else ''}, {'PostgreSQL' if args.postgres else 'SQLite'}); "
        "load from separate processes over loopback; "
        f"{args.sessions:,} active sessions; {args.seconds:.0f} s per load; single updates "
        f"from {args.clients} client processes "
        f"offered at {args.rate:g}/s; with the scheduler on, a re-plan of every session starts "
        f"{args.replan_every:g} s after the previous one ended. "
        "Targets: bulk ≥ 2,000 states/s; single updates p99 < 100 ms at 500/s.\n",
        "| background scheduler | bulk states/s | bulk batch p99 ms | single rate achieved /s "
        "| single p50 ms | single p99 ms | errors | server CPU ms per single update "
        "| re-plans during the loads (mean s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, s = r["bulk"], r["single"]
        section.append(
            f"| {'on' if r['background'] else 'off'} | {b['states_per_s']:,.0f} | "
            f"{b['batch_p99_ms']} | {s['rate_achieved']} | {s['p50_ms']} | {s['p99_ms']} | "
            f"{s['errors']} | {s.get('server_cpu_ms_per_request', 'n/a (several workers)')} | "
            f"{replans_cell(r['replans'])} |"
        )
    append_results("\n".join(section), {"when": when, "machine": where, "service": rows})


if __name__ == "__main__":
    main()
