"""The bulk write path of demand-response activations: rows written through the DB-API read
back exactly like ORM rows, pre-rendered profile texts equal the reference forms, reserved ids
never collide with later inserts, and a committed activation survives kill -9."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from api import bulk, dr
from api.bulk import Encoded, dumps, insert_columns, insert_rows, loads, reserve_ids
from api.db import make_engine, make_sessionmaker, migrate, transaction
from api.main import create_app
from api.models import OutboxItem, Profile, ProfileChange
from api.models_dr import DrCurtailment
from api.outbox import claim_due
from api.publish import reoptimise, same_from_start, step_limits_a
from api.settings import Settings
from optimizer.profiles import charging_profile_id, ocpp_forms
from tests.api.conftest import auth, make_key
from tests.api.test_demand_response import RELEASE_KW, seed, set_policy, settings_for

T0 = datetime(2026, 3, 29, 0, 45, 17, 250000, tzinfo=UTC)
HOUR = timedelta(hours=1)
OUTBOX_COLUMNS = (
    "id",
    "session_id",
    "cursor",
    "payload",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


@pytest.fixture
def app_client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(db_url))) as c:
        yield c


@pytest.fixture
def factory(db_url: str, app_client: TestClient) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def keys(db_url: str, app_client: TestClient) -> dict[str, str]:
    return {r: make_key(db_url, r) for r in ("operator", "brp", "csms")}


@pytest.fixture(params=["binary", "text"])
def bulk_factory(
    db_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """On PostgreSQL the rows go through a binary COPY, or through the text COPY that is used
    when a column has no binary form here (both are checked); SQLite has one path."""
    if request.param == "text":
        if not db_url.startswith("postgresql"):
            pytest.skip("one path on SQLite")
        monkeypatch.setattr(bulk, "_binary_types", lambda *a: None)
    migrate(db_url)
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_bulk_rows_read_back_like_orm_rows(bulk_factory: sessionmaker[Session]) -> None:
    outbox = cast(Table, OutboxItem.__table__)
    curtail = cast(Table, DrCurtailment.__table__)
    payload = {"charging_profile": {"a": [1.5, 2.0], "ü": 'x"y'}, "n": None}
    with transaction(bulk_factory) as db:
        db.add(OutboxItem(session_id="orm-1", cursor=1, payload={}, status="sent"))
        db.flush()
        conn = db.connection()
        ids = reserve_ids(conn, outbox, "id", 3)
        assert ids == sorted(ids) and len(set(ids)) == 3
        n = insert_rows(
            conn,
            outbox,
            OUTBOX_COLUMNS,
            [
                (ids[0], "b-1", 7, payload, "pending", 0, T0, T0, T0),
                (ids[1], "b-2", 8, Encoded(dumps(payload)), "pending", 0, T0, T0, T0),
                (ids[2], "b-3", 9, {"k": [0.1, 1e-7]}, "pending", 0, T0 + HOUR, T0, T0),
            ],
        )
        assert n == 3
        insert_rows(
            conn,
            curtail,
            dr.CURTAILMENT_COLUMNS,
            [(1, "b-1", None, T0, T0 + timedelta(minutes=15), 8.0, 16.0, 5.52, 3.0, None)],
        )
    with transaction(bulk_factory) as db:
        later = OutboxItem(session_id="orm-2", cursor=2, payload={}, status="pending")
        db.add(later)
        db.flush()
        assert later.id > max(ids)  # reserved ids are taken: the sequence moved past them
    with bulk_factory() as db:
        items = {i.session_id: i for i in db.scalars(select(OutboxItem))}
        assert items["b-1"].payload == payload and items["b-2"].payload == payload
        assert items["b-3"].payload == {"k": [0.1, 1e-7]}
        assert items["b-1"].next_attempt_at == T0 and items["b-1"].next_attempt_at.tzinfo
        assert items["b-1"].id == ids[0] and items["b-1"].created_at == T0
        # stored like the ORM stores datetimes: range queries compare correctly
        due = db.scalars(
            select(OutboxItem.session_id).where(OutboxItem.next_attempt_at <= T0)
        ).all()
        assert sorted(due) == ["b-1", "b-2"]
        c = db.scalars(select(DrCurtailment)).one()
        assert (c.start, c.until, c.planned_kwh, c.region) == (
            T0,
            T0 + timedelta(minutes=15),
            None,
            None,
        )
        n_held = db.scalar(
            select(func.count())
            .select_from(DrCurtailment)
            .where(DrCurtailment.until > T0 + timedelta(minutes=14, seconds=59))
        )
        assert n_held == 1


def test_bulk_text_with_copy_escapes_reads_back_unchanged(
    bulk_factory: sessionmaker[Session],
) -> None:
    """Tabs, newlines, carriage returns and backslashes (COPY's escapes on PostgreSQL), a
    backslash-dot line, nulls and infinite floats come back as written."""
    outbox = cast(Table, OutboxItem.__table__)
    curtail = cast(Table, DrCurtailment.__table__)
    weird = ["t\tab", "new\nline", "cr\r", "back\\slash", "\\.", "\\N", "é\t\\n"]
    payload = {"text": "a\tb\nc\\d", "list": weird}
    with transaction(bulk_factory) as db:
        conn = db.connection()
        ids = reserve_ids(conn, outbox, "id", len(weird))
        insert_rows(
            conn,
            outbox,
            OUTBOX_COLUMNS,
            [
                (i, sid, k, payload, "pending", 0, T0, T0, T0)
                for k, (i, sid) in enumerate(zip(ids, weird, strict=True))
            ],
        )
        insert_rows(
            conn,
            curtail,
            dr.CURTAILMENT_COLUMNS,
            [
                (1, "inf", "r\\1", T0, T0, 8.0, 16.0, 1e-7, float("inf"), None),
                (1, "big", None, T0, T0, 8.0, 0.1 + 0.2, -0.0, 1e300, 3.0),
            ],
        )
    with bulk_factory() as db:
        items = {i.session_id: i for i in db.scalars(select(OutboxItem))}
        assert sorted(items) == sorted(weird)
        assert all(i.payload == payload for i in items.values())
        rows = {c.session_id: c for c in db.scalars(select(DrCurtailment))}
    inf, big = rows["inf"], rows["big"]
    assert inf.region == "r\\1" and inf.current_before_a == 16.0
    assert inf.released_kw == 1e-7 and inf.kwh_at_signal == float("inf")
    assert inf.planned_kwh is None and big.region is None
    assert big.current_before_a == 0.1 + 0.2 and big.kwh_at_signal == 1e300


def test_insert_columns_takes_json_text_and_refuses_ragged_columns(
    bulk_factory: sessionmaker[Session],
) -> None:
    outbox = cast(Table, OutboxItem.__table__)
    payload = {"charging_profile": {"limit": 8.0}, "s": 'q"\\'}
    with transaction(bulk_factory) as db:
        conn = db.connection()
        ids = reserve_ids(conn, outbox, "id", 2)
        columns: dict[str, Any] = {
            "id": ids,
            "session_id": ["c-1", "c-2"],
            "cursor": [1, 2],
            "payload": [dumps(payload), dumps([1, "x"])],
            "status": ["pending"] * 2,
            "attempts": [0, 0],
            "next_attempt_at": [T0, T0],
            "created_at": [T0, T0],
            "updated_at": [T0, T0],
        }
        assert insert_columns(conn, outbox, columns, json_text=("payload",)) == 2
        with pytest.raises(ValueError, match="different lengths"):
            insert_columns(conn, outbox, {**columns, "cursor": [1]})
        with pytest.raises(ValueError, match="status: json_text"):
            insert_columns(conn, outbox, columns, json_text=("status",))
    with bulk_factory() as db:
        items = {i.session_id: i.payload for i in db.scalars(select(OutboxItem))}
    assert items == {"c-1": payload, "c-2": [1, "x"]}


def test_replace_on_replaces_rows_and_inserts_new_ones(
    bulk_factory: sessionmaker[Session],
) -> None:
    profiles = cast(Table, Profile.__table__)
    cols = ("session_id", "cursor", "run_id", "limits_a", "ocpi", "evse_id", "n_phases")
    cols += ("updated_at",)
    with transaction(bulk_factory) as db:
        insert_rows(
            db.connection(),
            profiles,
            cols,
            [
                ("p-1", 1, 1, [16.0], {"v": 1}, 1, 3, T0),
                ("p-2", 2, 1, [16.0], {"v": 1}, 1, 3, T0),
            ],
        )
    with transaction(bulk_factory) as db:
        insert_rows(
            db.connection(),
            profiles,
            cols,
            [
                ("p-2", 3, -4, [8.0], {"v": 2}, 2, 1, T0),
                ("p-3", 4, -4, [8.0], {}, 1, 3, T0),
            ],
            replace_on="session_id",
        )
    with bulk_factory() as db:
        rows = {p.session_id: p for p in db.scalars(select(Profile))}
    assert sorted(rows) == ["p-1", "p-2", "p-3"]
    assert (rows["p-2"].cursor, rows["p-2"].run_id, rows["p-2"].ocpi) == (3, -4, {"v": 2})
    assert rows["p-2"].limits_a == [8.0] and (rows["p-2"].evse_id, rows["p-2"].n_phases) == (2, 1)
    assert rows["p-1"].ocpi == {"v": 1}


def test_dumps_and_loads_agree_with_the_standard_library() -> None:
    for value in ({"a": 1.0, "b": [1, 2.5, None], "c": 'é"\n'}, {1: "x"}, [float("nan")]):
        assert json.loads(dumps(value), parse_constant=lambda c: c) == json.loads(
            json.dumps(value), parse_constant=lambda c: c
        )
    assert loads('{"x": NaN}')["x"] != loads('{"x": NaN}')["x"]  # written by json.dumps
    assert loads({"already": "decoded"}) == {"already": "decoded"}


PREVIOUS = [
    None,
    {
        "start_date_time": "2026-01-15T09:00:00Z",
        "duration": 3600,
        "charging_rate_unit": "A",
        "min_charging_rate": 8.0,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16.0},
            {"start_period": 900, "limit": 12.0},
            {"start_period": 1800, "limit": 10.0},
        ],
    },
    {  # ends before the restore: the curtailment alone
        "start_date_time": "2026-01-15T08:00:00Z",
        "duration": 3900,
        "charging_rate_unit": "A",
        "min_charging_rate": 6.0,
        "charging_profile_period": [{"start_period": 0, "limit": 32.0}],
    },
]


@pytest.mark.parametrize("previous", PREVIOUS)
@pytest.mark.parametrize("session_id", ["s-1", 'we"ird\\id-é', "0" * 36])
@pytest.mark.parametrize("n_phases", [1, 3])
def test_rendered_shape_text_equals_the_reference_forms(
    previous: dict[str, Any] | None, session_id: str, n_phases: int
) -> None:
    start = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    until = datetime(2026, 1, 15, 9, 15, tzinfo=UTC)
    settings = Settings(database_url="sqlite://")
    shape = dr.curtailment_shape(start=start, until=until, limit_a=6.0, previous=previous)
    rendered = dr.render_shape(shape, previous, n_phases, settings)
    forms = dr.curtailment_forms(
        session_id=session_id,
        evse_id=2,
        n_phases=n_phases,
        start=start,
        until=until,
        limit_a=6.0,
        previous=previous,
    )
    decoded = orjson.loads(rendered.ocpi_text)
    assert rendered.ocpi_text == dumps(forms["ocpi"])
    assert json.dumps(decoded) == json.dumps(forms["ocpi"])  # key order too
    derived = ocpp_forms(decoded, session_id=session_id, evse_id=2, n_phases=n_phases)
    for form in ("ocpp16", "ocpp201"):
        assert json.dumps(derived[form]) == json.dumps(forms[form])
    p16 = forms["ocpp16"]["csChargingProfiles"]
    assert p16["chargingProfileId"] == charging_profile_id(session_id)
    assert forms["ocpp201"]["chargingProfile"]["transactionId"] == session_id
    assert rendered.planned_kwh == dr.planned_kwh(previous, start, n_phases, 230.0)
    assert orjson.loads(rendered.limits_a_text) == step_limits_a(forms["ocpi"], 900)
    assert rendered.changed is True


@pytest.mark.parametrize("chunks", [None, (1, 2)], ids=["one chunk", "chunks of 1, 2, 2"])
def test_activation_rows_equal_the_reference_forms_and_ids_do_not_collide(
    app_client: TestClient,
    factory: sessionmaker[Session],
    keys: dict[str, str],
    db_url: str,
    chunks: tuple[int, int] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every row of an activation equals the reference forms, also when the profiles are
    rendered and written chunk by chunk (a worker renders the next chunk meanwhile)."""
    if chunks is not None:
        monkeypatch.setattr(dr, "RENDER_CHUNKS", chunks)
        assert len(dr.render_chunks(len(RELEASE_KW))) > 2
    now = datetime.now(UTC)
    seed(factory, now)
    settings = settings_for(db_url)
    reoptimise(factory, settings, now)
    with factory() as db:
        published = list(db.scalars(select(Profile)))
        before = {p.session_id: p.ocpi for p in published}
        # connector and phases as the scheduler published them (from the network)
        ids = {p.session_id: (p.evse_id, p.n_phases) for p in published}
        cursor_before = db.scalar(select(func.max(Profile.cursor)))
    set_policy(app_client, keys["operator"], auto_relay=True)
    r = app_client.post("/v1/demand-response/signals", json={}, headers=auth(keys["brp"]))
    assert r.status_code == 201, r.text
    out = r.json()
    with factory() as db:
        after = {p.session_id: p for p in db.scalars(select(Profile))}
        curtailed = {c.session_id: c for c in db.scalars(select(DrCurtailment))}
        items = {i.session_id: i for i in db.scalars(select(OutboxItem))}
        changes = {c.cursor: c for c in db.scalars(select(ProfileChange))}
    assert sorted(curtailed) == sorted(RELEASE_KW)
    for sid, c in curtailed.items():
        assert (after[sid].evse_id, after[sid].n_phases) == ids[sid]
        forms = dr.curtailment_forms(
            session_id=sid,
            evse_id=ids[sid][0],
            n_phases=ids[sid][1],
            start=c.start,
            until=c.until,
            limit_a=c.limit_a,
            previous=before[sid],
        )
        p = after[sid]
        assert (p.ocpi, p.ocpp16, p.ocpp201) == (forms["ocpi"], forms["ocpp16"], forms["ocpp201"])
        assert p.limits_a == step_limits_a(forms["ocpi"], settings.step_s)
        assert p.run_id == -out["activation_id"]
        assert changes[p.cursor].session_id == sid and changes[p.cursor].run_id == p.run_id
        item = items[sid]
        assert item.cursor == p.cursor and item.status == "pending" and item.payload is None
        assert c.planned_kwh == pytest.approx(
            dr.planned_kwh(
                before[sid],
                c.start,
                ids[sid][1],
                settings.voltage_v,
            )
        )
    # the feed shows the curtailment profiles after the scheduler's, in cursor order
    feed = app_client.get(
        "/v1/profiles", params={"changed_since": cursor_before}, headers=auth(keys["csms"])
    ).json()
    assert sorted(e["session_id"] for e in feed["profiles"]) == sorted(RELEASE_KW)
    for e in feed["profiles"]:
        p = after[e["session_id"]]
        assert (e["cursor"], e["ocpi"], e["ocpp16"], e["ocpp201"]) == (
            p.cursor,
            p.ocpi,
            p.ocpp16,
            p.ocpp201,
        )
    # the outbox sends each curtailed session its curtailment profile (composed from the
    # profile the item names) and never the scheduler's profile it replaced
    due = datetime.now(UTC)
    sent = {}
    while claimed := claim_due(factory, due, due + timedelta(seconds=20), settings.public_url):
        assert claimed.session_id not in sent
        sent[claimed.session_id] = claimed
    for sid in curtailed:
        assert sent[sid].id == items[sid].id
        assert sent[sid].payload == {
            "charging_profile": after[sid].ocpi,
            "response_url": f"{settings.public_url.rstrip('/')}/v1/profiles/results/{sent[sid].id}",
        }
    # the next publisher gets cursors and outbox ids after the reserved ones
    top_cursor, top_item = max(changes), max(i.id for i in items.values())
    with transaction(factory) as db:
        later = OutboxItem(session_id="s-4", cursor=top_cursor + 1, payload={})
        change = ProfileChange(session_id="s-4", run_id=99)
        db.add_all([later, change])
        db.flush()
        assert later.id > top_item and change.cursor > top_cursor


def test_a_committed_activation_survives_kill_9(db_url: str) -> None:
    """The answer comes after the commit: killing the server (no shutdown hooks) right after
    it loses nothing of the activation."""
    import httpx

    from tests.api.conftest import ServerProcess

    migrate(db_url)
    engine = make_engine(db_url)
    fac = make_sessionmaker(engine)
    seed(fac, datetime.now(UTC))
    op, brp = make_key(db_url, "operator"), make_key(db_url, "brp")
    env = {"GRIDCHARGE_CPO_URL": "http://127.0.0.1:9/ocpi/chargingprofiles"}
    srv = ServerProcess(db_url, env={**env, "GRIDCHARGE_BACKGROUND": "false"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.put("/v1/demand-response/policy", json={"auto_relay": True}, headers=auth(op))
            assert r.status_code == 200
            r = c.post("/v1/demand-response/signals", json={}, headers=auth(brp))
        srv.kill()
        assert r.status_code == 201, r.text
        out = r.json()
    finally:
        srv.kill()
    engine.dispose()
    engine = make_engine(db_url)  # a fresh connection: only what reached the database
    fac = make_sessionmaker(engine)
    try:
        with fac() as db:
            curtailed = db.scalars(
                select(DrCurtailment.session_id).where(
                    DrCurtailment.activation_id == out["activation_id"]
                )
            ).all()
            run_ids = set(
                db.scalars(select(Profile.run_id).where(Profile.session_id.in_(curtailed))).all()
            )
            pending = db.scalars(
                select(OutboxItem.session_id).where(OutboxItem.status == "pending")
            ).all()
        assert (
            sorted(curtailed) == sorted(RELEASE_KW) and len(curtailed) == out["sessions_curtailed"]
        )
        assert run_ids == {-out["activation_id"]}
        assert out["committed_s"] >= out["activation"]["time_s"] > 0
        assert sorted(pending) == sorted(RELEASE_KW)
    finally:
        engine.dispose()


def test_changed_agrees_with_same_from_start_on_random_profiles() -> None:
    """The curtailment leaves a session alone exactly when the scheduler's comparison finds the
    new profile equal to the published one."""
    import random

    rnd = random.Random(5)
    settings = Settings(database_url="sqlite://")
    start = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        n = rnd.randint(1, 4)
        starts = sorted(rnd.sample(range(1, 8), n - 1)) if n > 1 else []
        begin = rnd.choice([-900, -420, 0, 60])
        previous = {
            "start_date_time": (start + timedelta(seconds=begin)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration": rnd.choice([300, 900, 1380 - begin, 3600]),
            "charging_rate_unit": rnd.choice(["A", "A", "A", "W"]),
            "min_charging_rate": rnd.choice([8.0, 8.0, 6.0]),
            "charging_profile_period": [{"start_period": 0, "limit": rnd.choice([8.0, 16.0])}]
            + [{"start_period": 300 * k, "limit": rnd.choice([8.0, 12.0])} for k in starts],
        }
        if rnd.random() < 0.2:
            del previous["min_charging_rate"]
        until = start + timedelta(seconds=rnd.choice([60, 480, 900]))
        shape = dr.curtailment_shape(start=start, until=until, limit_a=8.0, previous=previous)
        rendered = dr.render_shape(shape, previous, 3, settings)
        ocpi = orjson.loads(rendered.ocpi_text)
        assert rendered.changed == (not same_from_start(ocpi, previous)), (previous, until)
        seen[rendered.changed] += 1
    assert seen[True] > 100 and seen[False] > 100


def test_bulk_numbers_of_other_python_types_read_back_as_floats(
    bulk_factory: sessionmaker[Session],
) -> None:
    """Ints for a float column and a number for a text column are written as the values they
    stand for, on every path."""
    curtail = cast(Table, DrCurtailment.__table__)
    with transaction(bulk_factory) as db:
        insert_rows(
            db.connection(),
            curtail,
            dr.CURTAILMENT_COLUMNS,
            [
                (3, "n-1", "r", T0, T0, 8.0, 16, 0.5, 2, None),
                (3, "n-2", 42, T0, T0, 6, 12, 1.25, 1e-3, 7.5),
            ],
        )
    with bulk_factory() as db:
        rows = {c.session_id: c for c in db.scalars(select(DrCurtailment))}
    a, b = rows["n-1"], rows["n-2"]
    assert (a.activation_id, a.limit_a, a.current_before_a, a.released_kw) == (3, 8.0, 16.0, 0.5)
    assert a.kwh_at_signal == 2.0 and a.planned_kwh is None and a.region == "r"
    assert (b.region, b.limit_a, b.current_before_a, b.kwh_at_signal) == ("42", 6.0, 12.0, 1e-3)
    assert b.planned_kwh == 7.5


def test_binary_copy_values_are_plain_python_types() -> None:
    import numpy as np

    from api.bulk import _binary_values

    floats = _binary_values([np.float64(8.0), 16, None, np.float32(0.5)], "float8")
    assert floats == [8.0, 16.0, None, 0.5] and {type(v) for v in floats} == {float, type(None)}
    ints = _binary_values([np.int64(3), 4, None], "int4")
    assert ints == [3, 4, None] and {type(v) for v in ints} == {int, type(None)}
    assert _binary_values([42, "x", None], "text") == ["42", "x", None]
    same = ["a", "b"]
    assert _binary_values(same, "text") is same  # nothing to convert: the list itself


def test_render_chunks_cover_the_sessions_in_order_with_a_small_first_one() -> None:
    first, size = dr.RENDER_CHUNKS
    for m in (0, 1, first - 1, first, first + 1, first + size, 13_084):
        got = dr.render_chunks(m)
        assert [i for a, b in got for i in range(a, b)] == list(range(m))
        assert all(b - a <= size for a, b in got)
        if m:
            assert got[0] == (0, min(first, m))
