"""Central settings: a TOML file (``--config`` or ``EIOT_CONFIG``) plus ``EIOT_*`` variables."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, model_validator

from edge_agent.settings_base import PLACEHOLDER_SECRETS, BrokerSettings, TomlEnvSettings, build
from edge_agent.topics import DEFAULT_ROOT


class CentralSettings(TomlEnvSettings, BrokerSettings):
    profile: Literal["laptop", "production"] = "laptop"
    # The ingest's own role (docs/security.md): it may insert into raw, nothing else.
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/eiot"
    topic_root: str = DEFAULT_ROOT
    # Shared-subscription group; empty for brokers without shared subscriptions.
    share_group: str = "ingest"
    # Stable per worker: the broker keeps its session (and queued messages) across restarts.
    worker_id: str = Field(default="1", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    # A worker that is gone for good keeps a share of the group's messages until its session
    # expires (agents resend them after their ack timeout): keep this short, ids stable.
    session_expiry_s: int = 3600
    receive_maximum: int = Field(default=4, ge=1, le=1000)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_inflated_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    db_retry_max_s: float = 10.0
    # raw.readings keeps whole months younger than this; older ones go once the warehouse holds
    # them (central retention run).
    retention_keep_days: int = Field(default=92, ge=1)
    # Reconnect to the broker after 0.2 s, doubling (with jitter) up to this: central and its
    # broker share a site, so a restarted broker is back in seconds (gateways on 3G wait up to
    # a minute).
    broker_backoff_max_s: float = Field(default=5.0, gt=0, le=60)
    # Plausibility at the door: a reading may not end before the fleet's first day, nor more
    # than max_future_s after central's clock.
    earliest_reading: date = date(2010, 1, 1)
    max_future_s: int = Field(default=600, ge=0)
    # A message quarantined whole keeps its bytes up to this size (else an excerpt, its size and
    # digest); each gateway may add this many bytes of quarantined excerpts per hour.
    quarantine_payload_max_bytes: int = Field(default=1024 * 1024, ge=0)
    quarantine_budget_bytes_per_hour: int = Field(default=64 * 1024 * 1024, ge=0)
    # The worker's own small files (which message it is handling: see central.poison).
    state_dir: Path = Path("var/ingest")
    # The worker's own /metrics (ack latency: central/ingest_metrics.py); off when unset. Not
    # metrics_port: that is the exporter's (central metrics serve), which may share the file.
    ingest_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    ingest_metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _production_is_secure(self) -> CentralSettings:
        if self.profile == "production":
            problems = self.broker_problems()
            params = conninfo_to_dict(self.pg_dsn)
            password = params.get("password")
            if not password or str(password).lower() in PLACEHOLDER_SECRETS:
                problems.append("production needs a real PostgreSQL password in EIOT_PG_DSN")
            if params.get("user") in (None, "postgres"):
                problems.append("EIOT_PG_DSN names the superuser: use the ingest's own role")
            if problems:
                raise ValueError("; ".join(problems))
        return self


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> CentralSettings:
    """Build the settings from a TOML file (if any), the environment and ``overrides``."""
    return build(CentralSettings, config_file, **overrides)
