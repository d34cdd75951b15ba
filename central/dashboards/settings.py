"""Dashboard settings: one settings object (``edge_agent.settings_base``), built by a function.

``EIOT_CLICKHOUSE_DSN`` names the warehouse as for every other part (default: the embedded
warehouse ``make demo`` leaves in ``var/demo/warehouse``); ``EIOT_SUPERSET_*`` the Superset
server. No password is a default: the admin password is generated on the first start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from central.warehouse.settings import SCHEMA_PATTERN
from edge_agent.settings_base import TomlEnvSettings, build

REPO_ROOT = Path(__file__).resolve().parents[2]


class DashboardSettings(TomlEnvSettings):
    """Where Superset runs, where its dashboards-as-code live, and which warehouse they read."""

    clickhouse_dsn: str = Field(
        default=f"chdb://{REPO_ROOT / 'var' / 'demo' / 'warehouse'}",
        description="chdb:///abs/path (embedded engine) or http(s)://user:pw@host:8123 (server).",
    )
    marts_schema: str = Field(default="marts", pattern=SCHEMA_PATTERN)
    superset_host: str = "127.0.0.1"
    superset_port: int = Field(default=8088, ge=1, le=65535)
    # Superset's home: its secret key, metadata database (SQLite), chart cache and admin password.
    superset_home: Path = REPO_ROOT / "var" / "superset"
    superset_venv: Path = REPO_ROOT / ".venv-superset"
    # Gunicorn workers x threads: charts of one dashboard are queried in parallel.
    superset_workers: int = Field(default=2, ge=1, le=16)
    superset_threads: int = Field(default=8, ge=1, le=64)
    # How long chart results are cached (0: every chart queries the warehouse every time).
    superset_cache_s: int = Field(default=300, ge=0)
    # The dashboards, charts and datasets in Superset's import format (the reviewed source).
    bundle_dir: Path = REPO_ROOT / "dashboards"
    # A Superset run elsewhere (docker-compose.yml's): `import` and `export` go to it, as its
    # admin, instead of to the one `serve` keeps in superset_home.
    superset_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    superset_admin_password: SecretStr | None = None


def get_settings(**overrides: Any) -> DashboardSettings:
    toml_file = os.environ.get("EIOT_CONFIG") or (
        "eiot.toml" if Path("eiot.toml").is_file() else None
    )
    return build(DashboardSettings, toml_file, **overrides)
