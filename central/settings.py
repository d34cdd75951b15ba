"""Central settings: a TOML file (``--config`` or ``EIOT_CONFIG``) plus ``EIOT_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, model_validator

from edge_agent.settings_base import TomlEnvSettings, build
from edge_agent.topics import DEFAULT_ROOT

PLACEHOLDER_SECRETS = {"", "changeme", "password", "secret", "postgres", "admin"}


class CentralSettings(TomlEnvSettings):
    profile: Literal["laptop", "production"] = "laptop"
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/eiot"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    broker_tls: bool = False
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
    max_inflated_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    db_retry_max_s: float = 10.0

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> CentralSettings:
        if self.profile == "production":
            password = conninfo_to_dict(self.pg_dsn).get("password")
            if not password or str(password).lower() in PLACEHOLDER_SECRETS:
                raise ValueError("production needs a real PostgreSQL password in EIOT_PG_DSN")
        return self


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> CentralSettings:
    """Build the settings from a TOML file (if any), the environment and ``overrides``."""
    return build(CentralSettings, config_file, **overrides)
