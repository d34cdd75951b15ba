"""Run dbt (installed in its own virtualenv, ``.venv-dbt``) against the warehouse.

dbt-clickhouse talks HTTP through clickhouse-connect. For an embedded warehouse the owner
process serves it (started for the duration of the run if none is running); for a server DSN
the connection details go to the ``server`` target through environment variables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from central.warehouse.client import chdb_path, served
from central.warehouse.settings import WarehouseSettings


def dbt_env(url: str, target: str) -> dict[str, str]:
    """Environment for ``dbt/profiles.yml`` pointing at the ClickHouse HTTP endpoint ``url``."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    env = {
        "EIOT_DBT_TARGET": target,
        "EIOT_CH_HOST": parts.hostname or "127.0.0.1",
        "EIOT_CH_PORT": str(parts.port or (8443 if secure else 8123)),
        "EIOT_CH_SECURE": "True" if secure else "False",
    }
    if parts.username:
        env["EIOT_CH_USER"] = unquote(parts.username)
    if parts.password:
        env["EIOT_CH_PASSWORD"] = unquote(parts.password)
    return env


def dbt_executable(settings: WarehouseSettings) -> str:
    exe = settings.dbt_executable
    if os.path.exists(exe):
        return exe
    found = shutil.which("dbt")
    if found is None:
        raise FileNotFoundError(
            f"dbt not found at {exe} nor on PATH: create .venv-dbt (make install)"
        )
    return found


def run_dbt(
    settings: WarehouseSettings,
    args: Sequence[str],
    capture: bool = False,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``dbt <args>`` in the project directory, against the configured warehouse."""
    project = settings.dbt_project_dir
    embedded = chdb_path(settings.clickhouse_dsn) is not None
    target = settings.dbt_target or ("embedded" if embedded else "server")
    with served(settings.clickhouse_dsn) as url:
        env = {
            **os.environ,
            **dbt_env(url, target),
            "DBT_PROFILES_DIR": str(project),
            "DBT_PROJECT_DIR": str(project),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            **(extra_env or {}),
        }
        return subprocess.run(
            [dbt_executable(settings), *args],
            cwd=project,
            env=env,
            text=True,
            capture_output=capture,
            check=False,
        )
