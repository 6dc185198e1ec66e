"""Bulk writes of many rows inside the caller's transaction, through the DB-API cursor.

For tens of thousands of rows SQLAlchemy's per-row parameter handling (bind processors, JSON
encoding with the standard library, parameter dictionaries) costs several times the database's
own work. These helpers encode every value once, in plain tuples, and hand them to the driver:
``executemany`` on SQLite, binary ``COPY ... FROM STDIN`` on PostgreSQL. They write exactly
what the ORM would (same columns, same stored representation: JSON text, UTC datetimes through
the column type's own bind processor), inside the caller's transaction, so a failure rolls
back everything with the rest of it.

Keys of ``autoincrement`` columns that the caller needs before the insert (a cursor that goes
into other rows) are reserved with
:func:`reserve_ids`: the table's sequence on PostgreSQL, ``max + 1 ...`` on SQLite (what SQLite
itself would assign; the write transaction holds the database's only write lock by then).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import JSON, Connection, Table, text

from api.db import JSONText, UTCDateTime

_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    """JSON text of ``value`` as the standard library writes it (orjson when it can: it is an
    order of magnitude faster; ``json.dumps`` for what orjson refuses, and for non-finite
    floats, which orjson would turn into ``null``)."""
    try:
        out = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(value)
    if b"null" in out and _has_non_finite(value):
        return json.dumps(value)
    return out.decode()


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def loads(value: Any) -> Any:
    """A JSON column's value as read through the driver: text on SQLite (decoded here), already
    decoded on PostgreSQL."""
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return json.loads(value)  # NaN/Infinity written by the standard library
    return value


def _identity(value: Any) -> Any:
    return value


def _encoder(conn: Connection, table: Table, name: str) -> Callable[[Any], Any]:
    """Function turning a Python value of column ``name`` into what the driver gets."""
    col = table.c[name]
    dialect = conn.dialect
    if isinstance(col.type, JSON | JSONText):
        return lambda v: None if v is None else dumps(v)
    proc = col.type.dialect_impl(dialect).bind_processor(dialect)
    if proc is None:
        return _identity
    if isinstance(col.type, UTCDateTime):
        cache: dict[datetime, Any] = {}

        def dt(v: datetime | None) -> Any:
            if v is None:
                return None
            out = cache.get(v)
            if out is None:
                out = cache[v] = proc(v)
            return out

        return dt
    return cast(Callable[[Any], Any], proc)


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    replace_on: str | None = None,
) -> int:
    """Insert ``rows`` (tuples in the order of ``columns``, Python values); returns the count.

    JSON columns take Python objects (or text already encoded with :func:`dumps`, given as
    :class:`Encoded`); datetime columns aware datetimes. Python-side column defaults (the ORM's
    ``default=``) are not applied: give every column that may not be null.

    With ``replace_on`` (a unique column among ``columns``) a row replaces the stored row with
    the same value: ``INSERT ... ON CONFLICT DO UPDATE`` on SQLite (the row is rewritten in
    place), ``DELETE`` then ``COPY`` on PostgreSQL (``COPY`` cannot upsert); columns not given
    keep their value on SQLite and get their default on PostgreSQL, so give them all.
    """
    rows = list(rows)
    if not rows:
        return 0
    return insert_columns(
        conn,
        table,
        {name: [row[k] for row in rows] for k, name in enumerate(columns)},
        replace_on=replace_on,
    )


def insert_columns(
    conn: Connection,
    table: Table,
    data: Mapping[str, Sequence[Any]],
    *,
    json_text: Container[str] = (),
    replace_on: str | None = None,
) -> int:
    """:func:`insert_rows` given column by column (``data``: column name → one value per row,
    all of the same length); returns the count. The JSON columns named in ``json_text`` take
    text already encoded with :func:`dumps` (no per-value wrapper)."""
    columns = list(data)
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0:
        return 0
    encoded_columns: list[list[Any]] = []
    for name in columns:
        values = list(data[name])
        enc = _encoder(conn, table, name)
        if name in json_text:
            if not isinstance(table.c[name].type, JSON | JSONText):
                raise ValueError(f"{name}: json_text names a column that is not JSON")
        elif enc is not _identity:
            values = [v.text if isinstance(v, Encoded) else enc(v) for v in values]
        encoded_columns.append(values)
    rows = range(n)
    cols_q = [conn.dialect.identifier_preparer.quote(c) for c in columns]
    cols = ", ".join(cols_q)
    name = conn.dialect.identifier_preparer.format_table(table)
    if conn.dialect.name == "postgresql":
        if replace_on is not None:
            k = list(columns).index(replace_on)
            _delete_keys(conn, name, cols_q[k], encoded_columns[k])
        raw = conn.connection.driver_connection
        assert raw is not None
        binary = _binary_types(conn, table, columns)
        if binary is not None:
            # binary COPY: each field goes as its length and its bytes, so the server neither
            # scans 40 MB of JSON for delimiters and escapes nor parses numbers and times
            binary_columns = [
                _binary_values(values, kind)
                for values, kind in zip(encoded_columns, binary, strict=True)
            ]
            sql = f"COPY {name} ({cols}) FROM STDIN (FORMAT BINARY)"
            with raw.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(binary)
                for row in zip(*binary_columns, strict=True):
                    copy.write_row(row)
            return len(rows)
        text_columns = [_copy_texts(values) for values in encoded_columns]
        with raw.cursor() as cur, cur.copy(f"COPY {name} ({cols}) FROM STDIN") as copy:
            for k in range(0, len(rows), COPY_CHUNK_ROWS):
                rows_text = zip(*(c[k : k + COPY_CHUNK_ROWS] for c in text_columns), strict=True)
                copy.write("".join(["\t".join(r) + "\n" for r in rows_text]).encode())
    else:
        marks = ", ".join("?" if conn.dialect.paramstyle == "qmark" else "%s" for _ in columns)
        sql = f"INSERT INTO {name} ({cols}) VALUES ({marks})"
        if replace_on is not None:
            quote = conn.dialect.identifier_preparer.quote
            sets = ", ".join(
                f"{quote(c)} = excluded.{quote(c)}" for c in columns if c != replace_on
            )
            sql += f" ON CONFLICT ({quote(replace_on)}) DO UPDATE SET {sets}"
        conn.exec_driver_sql(sql, list(zip(*encoded_columns, strict=True)))
    return len(rows)


_KEY_SEPARATOR = "\x1f"
"""Joins the keys of :func:`_delete_keys` into one text (ASCII unit separator)."""


def _delete_keys(conn: Connection, table: str, column: str, keys: list[Any]) -> None:
    """``DELETE FROM table WHERE column = ANY(keys)`` on PostgreSQL. Text keys go as one text
    split by the server: the driver encodes a list of 16,000 strings as an array literal
    element by element, several times the cost of the delete. Keys that hold the separator
    (none that a session id can hold) or are empty go as an array."""
    if all(k.__class__ is str and k for k in keys):  # string_to_array('') is {}
        joined = _KEY_SEPARATOR.join(keys)
        if joined.count(_KEY_SEPARATOR) == len(keys) - 1:
            conn.execute(
                text(f"DELETE FROM {table} WHERE {column} = ANY(string_to_array(:keys, :sep))"),
                {"keys": joined, "sep": _KEY_SEPARATOR},
            )
            return
    conn.execute(text(f"DELETE FROM {table} WHERE {column} = ANY(:keys)"), {"keys": keys})


_BINARY_TYPES = {
    # the column's type → the type the value is sent as in a binary COPY (the server reads it
    # with the column's own receive function: a json column receives its text as is)
    "text": "text",
    "varchar": "text",
    "json": "text",
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "float4": "float4",
    "float8": "float8",
    "bool": "bool",
    "timestamptz": "timestamptz",
}


_CATALOG_KEY = "gridcharge.bulk.catalog"
"""Key of :func:`_catalog`'s cache in a pooled connection's ``info``."""


def _catalog(conn: Connection, key: tuple[str, ...], look_up: Callable[[], Any]) -> Any:
    """``look_up()`` once per database connection and ``key``: the server's catalog (column
    types, sequences) does not change under a running service, and a query per chunk of a bulk
    write is a round trip each time. Kept in the pooled connection's ``info``, which lives as
    long as the connection to the server (a migration runs before the service's engine
    connects: :func:`api.db.migrate`)."""
    cache = conn.connection.info.setdefault(_CATALOG_KEY, {})
    if key not in cache:
        cache[key] = look_up()
    return cache[key]


def _binary_types(conn: Connection, table: Table, columns: Sequence[str]) -> list[str] | None:
    """The types to send ``columns`` as in a binary ``COPY`` (from the server's catalog), or
    None when one of them has no binary form here (the text ``COPY`` is used then)."""
    name = conn.dialect.identifier_preparer.format_table(table)

    def look_up() -> dict[str, str | None]:
        rows = conn.execute(
            text(
                "SELECT a.attname, t.typname FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            {"t": name},
        ).all()
        return {str(n): _BINARY_TYPES.get(str(t)) for n, t in rows}

    types = cast(dict[str, str | None], _catalog(conn, ("types", name), look_up))
    out = [types.get(c) for c in columns]
    return None if any(t is None for t in out) else cast(list[str], out)


_BINARY_PYTHON: dict[str, Callable[[Any], Any]] = {
    "text": str,
    "int2": int,
    "int4": int,
    "int8": int,
    "float4": float,
    "float8": float,
    "bool": bool,
}


def _binary_values(values: list[Any], kind: str) -> list[Any]:
    """``values`` as the driver's binary dumper of ``kind`` takes them (numbers as Python
    ``int``/``float``, text as ``str``: numpy scalars, ints for a float column and numbers for
    a text column are converted, as the text ``COPY`` would write them)."""
    to = _BINARY_PYTHON.get(kind)
    if to is None:
        return values
    if all(v.__class__ is to or v is None for v in values):
        return values
    return [None if v is None else to(v) for v in values]


COPY_CHUNK_ROWS = 4096
"""Rows per buffer handed to ``COPY`` (a few MB; the driver streams them)."""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """One field in ``COPY``'s text format: ``\\N`` for null, backslash, tab, newline and
    carriage return escaped, booleans ``t``/``f``, floats that PostgreSQL reads back exactly."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.translate(_COPY_ESCAPES)
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return _copy_text(str(value))


_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _copy_texts(values: list[Any]) -> list[str]:
    """:func:`_copy_text` of a column, with fast paths for columns of one plain type (text that
    needs no escape, the most of it, passes as is; equal datetimes are formatted once)."""
    kinds = {v.__class__ for v in values}
    if kinds == {str}:
        return [
            v
            if "\\" not in v and "\t" not in v and "\n" not in v and "\r" not in v
            else _copy_text(v)
            for v in values
        ]
    if kinds == {float}:
        texts = [repr(v) for v in values]
        return [_FLOAT_WORDS.get(t, t) for t in texts]
    if kinds == {int}:
        return [str(v) for v in values]
    cache: dict[Any, str] = {}
    out = []
    for v in values:
        try:
            t = cache.get(v)
        except TypeError:  # unhashable: not cached
            t = None
        if t is None:
            t = _copy_text(v)
            if v.__class__ is not str:
                with contextlib.suppress(TypeError):
                    cache[v] = t
        out.append(t)
    return out


class Encoded:
    """JSON text already encoded (with :func:`dumps`), passed through :func:`insert_rows` as is."""

    __slots__ = ("text",)

    def __init__(self, value: str) -> None:
        self.text = value


def reserve_ids(conn: Connection, table: Table, column: str, n: int) -> list[int]:
    """``n`` new values of the autoincrement ``column``, increasing, for rows inserted in this
    transaction with explicit keys."""
    if n <= 0:
        return []
    name = conn.dialect.identifier_preparer.format_table(table)
    if conn.dialect.name == "postgresql":
        seq = _catalog(
            conn,
            ("sequence", name, column),
            lambda: conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)::regclass::oid"),
                {"t": table.name, "c": column},
            ).scalar_one(),
        )
        # One row with an array, not n rows: the driver decodes it in one go. The sequence is
        # a constant (its oid, folded once by the planner); given as a subquery joined to the
        # series it was looked up again for every value, ten times the cost of nextval.
        values = conn.exec_driver_sql(
            f"SELECT array_agg(nextval({int(seq)}::oid::regclass)) "
            f"FROM generate_series(1, {int(n)})"
        ).scalar_one()
        return sorted(int(v) for v in values)
    col = conn.dialect.identifier_preparer.quote(column)
    top = conn.exec_driver_sql(f"SELECT coalesce(max({col}), 0) FROM {name}").scalar()
    first = int(top or 0) + 1
    return list(range(first, first + n))
