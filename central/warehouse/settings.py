"""Warehouse settings: one settings object (``edge_agent.settings_base``), built by a function,
never at import time.

Environment variables use the ``EIOT_`` prefix (``EIOT_CLICKHOUSE_DSN``, ``EIOT_PG_DSN``...); a
TOML file (``EIOT_CONFIG``, default ``eiot.toml`` in the working directory) may set the same keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from edge_agent.settings_base import TomlEnvSettings, build

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WAREHOUSE_PATH = REPO_ROOT / "var" / "warehouse"


#: A ClickHouse database name this project creates (quoted nowhere: letters, digits, underscore).
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


class WarehouseSettings(TomlEnvSettings):
    """Where the warehouse lives and how the loader, dbt and the quality checks reach it."""

    clickhouse_dsn: str = Field(
        default=f"chdb://{DEFAULT_WAREHOUSE_PATH}",
        description="chdb:///abs/path (embedded engine) or http(s)://host:8123/db (server).",
    )
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/eiot"
    # The owner server that shares one embedded engine with other processes (127.0.0.1 only).
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8124, ge=0, le=65535)
    # Loader
    raw_database: str = "raw"
    load_chunk_rows: int = Field(default=500_000, ge=1_000)
    # Rows stored in Postgres this long before the upper bound of a load are read again: a
    # safety net under the in-flight-transaction bound (ReplacingMergeTree collapses repeats).
    load_overlap_s: float = Field(default=300.0, ge=0)
    # dbt lives in its own virtualenv (its pins clash with the main one).
    dbt_executable: str = str(REPO_ROOT / ".venv-dbt" / "bin" / "dbt")
    dbt_project_dir: Path = REPO_ROOT / "dbt"
    # dbt target: `embedded` for a chdb:/// DSN, `server` otherwise, unless set.
    dbt_target: str | None = None
    gx_dir: Path = REPO_ROOT / "gx"
    # The marts readers use (dashboards, training, reports), and the database the orchestrated
    # refresh builds and checks them in before publishing them there (central/warehouse/publish.py).
    marts_schema: str = Field(default="marts", pattern=SCHEMA_PATTERN)
    marts_build_schema: str = Field(default="marts_build", pattern=SCHEMA_PATTERN)
    # How long a run of warehouse_refresh keeps the warehouse without renewing it (a live run
    # renews it while it works): a holder that died frees it after this. Below the 4 h a waiting
    # run waits (warehouse_refresh.LEASE_WAIT).
    lease_ttl_s: float = Field(default=7200.0, ge=60, le=3 * 3600)

    @model_validator(mode="after")
    def _marts_apart(self) -> WarehouseSettings:
        if self.marts_schema == self.marts_build_schema:
            raise ValueError("marts_build_schema must differ from marts_schema")
        return self


def get_settings(**overrides: Any) -> WarehouseSettings:
    toml_file = os.environ.get("EIOT_CONFIG") or (
        "eiot.toml" if Path("eiot.toml").is_file() else None
    )
    return build(WarehouseSettings, toml_file, **overrides)
