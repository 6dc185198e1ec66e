"""Service settings from the environment (prefix ``GRIDCHARGE_``), via pydantic-settings."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of the scheduling service.

    Every field can be set as ``GRIDCHARGE_<NAME>`` in the environment (or a ``.env`` file).
    """

    model_config = SettingsConfigDict(env_prefix="GRIDCHARGE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./gridcharge.db",
        description="SQLAlchemy URL: sqlite:///FILE (default) or postgresql+psycopg://USER@HOST/DB",
    )
    step_s: int = Field(default=900, gt=0, description="Scheduling grid step [s].")
    horizon_steps: int = Field(default=96, gt=0, description="Steps in the rolling horizon.")
    voltage_v: float = Field(default=230.0, gt=0)
    timezone: str = Field(
        default="Europe/Amsterdam",
        description="Local time zone of DSO days and settlement periods.",
    )
    reschedule_every_s: float = Field(
        default=300.0, gt=0, description="Re-optimise at least this often [s]."
    )
    debounce_s: float = Field(
        default=2.0, ge=0, description="Wait after an event before re-optimising [s]."
    )
    solver_time_limit_s: float = Field(default=30.0, gt=0)
    workers: int | None = Field(
        default=None, ge=1, description="Parts (DSO regions) solved at once [default: cores]."
    )
    scheduler: str | None = Field(
        default=None,
        pattern=r"^(tcp|tls)://.+:[0-9]+$",
        description="Dask scheduler tcp://HOST:PORT to solve the parts on (docs/scale.md).",
    )
    live_engine: bool = Field(
        default=True,
        description="Keep solver state between re-plans (warm re-solves; docs/scale.md).",
    )
    sync_schedule_max_sessions: int = Field(
        default=2000, ge=0, description="POST /v1/schedules answers 202 with a job above this."
    )
    cpo_url: str | None = Field(
        default=None, description="Push profiles to {cpo_url}/{session_id}."
    )
    cpo_token: str | None = Field(
        default=None, description="OCPI token for the CPO (Authorization)."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL of this service (for response_url)."
    )
    outbox_max_attempts: int = Field(
        default=20, ge=1, description="Attempts in one round of pushes before an item is failed."
    )
    outbox_failed_retry_s: float = Field(
        default=3600.0,
        gt=0,
        description="A failed item starts another round of attempts after this rest [s] (at "
        "once when a push to the CPO succeeds again).",
    )
    outbox_max_rounds: int = Field(
        default=6, ge=1, description="Rounds of attempts before a failed item is abandoned."
    )
    outbox_result_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A sent item whose asynchronous result has not arrived after this becomes "
        "no_result [s].",
    )
    outbox_backoff_s: float = Field(
        default=1.0, gt=0, description="First retry delay; doubles, capped at 300 s."
    )
    background: bool = Field(default=True, description="Run the scheduler and outbox loops.")
    forecast_quantile: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Quantile of the promoted departure model the scheduler uses for sessions "
        "without a driver-given departure (low = conservative); 0 turns the model off.",
    )
    forecast_history_days: float = Field(
        default=365.0,
        gt=0,
        description="Per-user history for live predictions: sessions ended in this many days.",
    )
    forecast_max_iter: int = Field(
        default=150, ge=10, description="Boosting iterations per forecasting model."
    )
    forecast_max_upload_mb: float = Field(
        default=50.0, gt=0, description="Largest training file accepted by the API [MB]."
    )
    scheduler_process: bool = Field(
        default=True,
        description="Re-optimise in a child process (at lower CPU priority, see "
        "scheduler_nice), so that building, solving and checking a large schedule neither holds "
        "the interpreter lock of the process that answers requests nor takes CPU from it.",
    )
    scheduler_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness added to the scheduler's child process (0 = same priority as the "
        "requests; 19 = lowest).",
    )
    scheduler_lease_ttl_s: float = Field(
        default=30.0,
        ge=1,
        description="Lease electing the one process of a deployment that runs the scheduler "
        "(api/lease.py): renewed every third of it; another process takes over at most this "
        "long after the holder died [s].",
    )
    publish_chunk_sessions: int = Field(
        default=25,
        ge=1,
        description="Profiles written per publishing transaction (short transactions keep the "
        "database's write lock free for requests).",
    )
    publish_write_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="SQLite only: the share of the time publishing may hold the database's one "
        "write lock (each chunk is followed by a pause; 1 = no pause).",
    )
    token_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA-256 that token uids are stored as (api/tokens.py). "
        "Unset: a random one is generated at the first start and kept in the database.",
    )

    @property
    def scheduler_in_child(self) -> bool:
        """Whether the scheduler runs in a child process (see ``scheduler_process``)."""
        return self.scheduler_process


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings from the environment (routes use the app's own settings:
    :func:`api.deps.app_settings`)."""
    return Settings()
