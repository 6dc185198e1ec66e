"""FastAPI dependencies: settings, database sessions and the caller's role."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.security import Principal, lookup
from api.settings import Settings


def app_settings(request: Request) -> Settings:
    """The settings the application was created with (``create_app(settings)``).

    Read from ``app.state`` rather than overriding :func:`api.settings.get_settings` with
    ``app.dependency_overrides``: any override makes FastAPI rebuild every dependency's
    signature on every request (about 1 ms per request).
    """
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    return factory


def get_db(request: Request) -> Iterator[Session]:
    """A database session for one request (the route commits what it means to keep)."""
    with get_sessionmaker(request)() as session:
        yield session


DbDep = Annotated[Session, Depends(get_db)]


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    for scheme in ("Token ", "Bearer "):
        if auth.startswith(scheme):
            return auth[len(scheme) :].strip()
    return request.headers.get("x-api-key")


async def get_principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Token <key>`` (OCPI), ``Bearer <key>`` or ``X-API-Key``.

    Async so that a known key costs no trip to the thread pool (it is answered from the
    in-process cache); an unknown key is looked up in the database in the thread pool.
    """
    key = _key_from(request)
    if not key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authorization: missing API key (send 'Authorization: Token <key>')",
            headers={"WWW-Authenticate": "Token"},
        )
    cache: dict[str, Principal] = request.app.state.key_cache
    principal = cache.get(key)
    if principal is None:
        principal = await run_in_threadpool(_lookup, get_sessionmaker(request), key)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "authorization: unknown or revoked API key"
            )
        cache[key] = principal
    return principal


def _lookup(factory: sessionmaker[Session], key: str) -> Principal | None:
    with factory() as session:
        return lookup(session, key)


def require(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency admitting only the given roles (``admin`` always)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role != "admin" and principal.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role: {principal.role!r} may not do this (allowed: {', '.join(roles)}, admin)",
            )
        return principal

    return check


def check_region(principal: Principal, region: str) -> None:
    """403 unless the caller may act on ``region`` (a DSO only on its own regions)."""
    if not principal.may_act_on_region(region):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"region: key {principal.prefix}… may not act on {region!r}"
        )


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""Instants the service accepts in query parameters (local days and settlement periods exist)."""


def instant(value: str | None, field: str) -> datetime | None:
    """An ISO-8601 instant with a UTC offset between 2000 and 2100, else 422 naming ``field``."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{field}: not an ISO-8601 date-time (got {value!r})") from None
    if when.tzinfo is None:
        raise HTTPException(422, f"{field}: needs a UTC offset (got {value!r})")
    return in_range(field, when)


def in_range(field: str, when: datetime) -> datetime:
    """``when`` if it lies in 2000-2100, else 422 naming ``field``."""
    if not EARLIEST <= when < LATEST:
        raise HTTPException(422, f"{field}: must lie in 2000-2100 (got {when.isoformat()})")
    return when
