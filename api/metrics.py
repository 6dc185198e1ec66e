"""Prometheus metrics of the service (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

SOLVE_SECONDS = Histogram(
    "gridcharge_solve_seconds",
    "Wall time of a re-optimisation [s]",
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
ACTIVE_SESSIONS = Gauge(
    "gridcharge_active_sessions", "Sessions currently plugged in", registry=REGISTRY
)
PROFILE_LAG_SECONDS = Gauge(
    "gridcharge_profile_lag_seconds", "Age of the newest published schedule [s]", registry=REGISTRY
)
OUTBOX_DEPTH = Gauge("gridcharge_outbox_depth", "Profiles waiting to be pushed", registry=REGISTRY)
FALLBACKS = Counter(
    "gridcharge_fallbacks", "Schedules published from the greedy fallback", registry=REGISTRY
)
REJECTED_SCHEDULES = Counter(
    "gridcharge_rejected_schedules",
    "Schedules not published because the checker found a violation",
    registry=REGISTRY,
)
STATES_RECEIVED = Counter(
    "gridcharge_session_states", "Session states received", ["outcome"], registry=REGISTRY
)
OUTBOX_REQUEUED = Counter(
    "gridcharge_outbox_requeued",
    "Failed outbox items given another round of attempts",
    ["why"],
    registry=REGISTRY,
)
OUTBOX_ABANDONED = Counter(
    "gridcharge_outbox_abandoned",
    "Outbox items abandoned after their last round of attempts",
    registry=REGISTRY,
)
OUTBOX_RESULT_TIMEOUTS = Counter(
    "gridcharge_outbox_result_timeouts",
    "Sent outbox items whose asynchronous result did not arrive in time",
    registry=REGISTRY,
)
