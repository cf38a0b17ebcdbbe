"""One settings object for the whole service.

Every value can be set with a ``FEDSENTINEL_<NAME>`` environment variable
(``FEDSENTINEL_DATABASE_URL``, ``FEDSENTINEL_API_KEYS`` ...), which is also how
the CLI hands its flags to several uvicorn workers.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Scope(StrEnum):
    """What an API key may do. ``admin`` implies the other two."""

    read = "read"
    write = "write"
    admin = "admin"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDSENTINEL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    data_dir: Path = Path("./data")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is a SQLite file in data_dir. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    sqlite_synchronous: str = Field(
        default="FULL",
        description="SQLite PRAGMA synchronous; FULL makes every acknowledged write survive power loss.",
    )
    api_keys: dict[str, list[Scope]] = Field(
        default_factory=dict,
        description='JSON object {"key": ["read", "write"]}; empty = open service (local demo).',
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    large_body_bytes: int = Field(
        default=1024 * 1024, ge=0,
        description="Bodies over this size (or of undeclared size) need one of the upload slots.",
    )
    max_concurrent_large_uploads: int = Field(
        default=4, ge=1,
        description="Large bodies read and parsed at once per worker; more wait for a slot.",
    )
    upload_slot_wait_seconds: float = Field(
        default=10.0, ge=0,
        description="How long a large upload waits for a slot before it gets 503 + Retry-After.",
    )
    body_timeout_seconds: float = Field(
        default=60.0, gt=0,
        description="A request body must arrive within this long after its headers, else 408.",
    )
    keep_alive_timeout_seconds: float = Field(
        default=5.0, gt=0, description="uvicorn: an idle keep-alive connection is closed after this."
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0,
        description="A connection whose request line and headers are not complete this long after "
        "it opened (or after its previous answer) is closed: slow-header clients cannot hold it.",
    )
    max_connections: int | None = Field(
        default=None, ge=1,
        description="uvicorn limit_concurrency: beyond this many connections/tasks a worker answers "
        "503; none by default (put a reverse proxy in front for that).",
    )
    max_reports_per_request: int = Field(default=20_000, ge=1)
    page_size_max: int = Field(default=1000, ge=1)
    log_level: str = "info"

    # Prometheus export (see monitor/exporter.py).
    exporter_top_k_clients: int = Field(default=50, ge=0)
    exporter_max_exported_clients: int = Field(
        default=200, ge=0,
        description="Clients with per-client series across all runs of one scrape (the most "
        "recently active runs first); bounds the exposition when many runs are live.",
    )
    exporter_max_clients: int = Field(
        default=500, ge=0, description="Hard ceiling on per-client series per run, flagged clients included."
    )
    exporter_run_ttl_seconds: float = Field(
        default=7 * 86400, ge=0, description="Runs idle for longer are not exported; 0 = export every run."
    )
    alert_webhook_token: str | None = Field(
        default=None, description="Bearer token Alertmanager may use for the alert webhook instead of a write key."
    )

    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a key even when API keys are configured.",
    )

    # Analysis off the request path (see monitor/worker.py).
    analysis: Literal["in_process", "external"] = Field(
        default="in_process",
        description="in_process: each service process runs an analysis thread; external: the "
        "service only ingests and `fedsentinel worker` processes analyse.",
    )
    analysis_poll_seconds: float = Field(
        default=1.0, gt=0, le=3600,
        description="How often a worker looks for rounds closed by other processes or left to retry.",
    )

    # Bounded storage (see monitor/store/prune.py).
    retention_rounds: int = Field(
        default=1000, ge=1,
        description="Client arrays (sketches, histograms) of rounds more than this many rounds "
        "behind a run's last analysed round are compacted away; scalars, scores and findings stay.",
    )
    auto_prune: bool = Field(
        default=True, description="Compact old rounds as the analysis passes them (else: `fedsentinel prune`)."
    )

    # Direct notifier for setups without Alertmanager.
    notify_webhook_url: str | None = None
    notify_webhook_token: str | None = Field(
        default=None, description="Bearer token sent with direct notifications, if the receiver needs one."
    )

    @field_validator("sqlite_synchronous")
    @classmethod
    def _known_synchronous(cls, value: str) -> str:
        value = value.upper()
        if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The URL the store connects to (a SQLite file in data_dir by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fedsentinel.db').as_posix()}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)
