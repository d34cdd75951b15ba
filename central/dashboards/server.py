"""Superset's home and process: its secret key, metadata database, admin login, and the server.

The home (``var/superset``) holds a generated secret key and admin password (both mode 0600),
the metadata database (SQLite) and the chart cache. Nothing in it is a default: a fresh home
gets fresh secrets. The configuration itself is ``deploy/superset/superset_config.py``.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from central.dashboards.settings import DashboardSettings
from central.files import write_atomic

ADMIN_USER = "admin"
#: Superset's configuration, shared with docker-compose.yml's Superset; what differs comes from
#: the environment (``SupersetHome.env``).
SUPERSET_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "superset" / "superset_config.py"
# Where homes made by earlier versions kept the secret key: a generated config with this line.
_OLD_CONFIG_KEY = re.compile(r"^SECRET_KEY = '([^']+)'$", re.MULTILINE)


@dataclass(frozen=True)
class SupersetHome:
    settings: DashboardSettings

    @property
    def home(self) -> Path:
        return self.settings.superset_home

    @property
    def secret_path(self) -> Path:
        return self.home / "secret_key"

    @property
    def password_path(self) -> Path:
        return self.home / "admin.password"

    @property
    def url(self) -> str:
        return f"http://{self.settings.superset_host}:{self.settings.superset_port}"

    def port_in_use(self) -> bool:
        """Something already listens where this Superset would (a stale one would answer our
        health checks and refuse our login)."""
        try:
            with socket.create_connection(
                (self.settings.superset_host, self.settings.superset_port), timeout=2
            ):
                return True
        except OSError:
            return False

    def bin(self, name: str) -> str:
        return str(self.settings.superset_venv / "bin" / name)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SUPERSET_CONFIG_PATH": str(SUPERSET_CONFIG),
                "SUPERSET_HOME": str(self.home),
                "SUPERSET_SECRET_KEY": self.secret_key(),
                "FLASK_APP": "superset.app:create_app()",
                "SUPERSET_LOAD_EXAMPLES": "no",
                "EIOT_SUPERSET_CACHE_S": str(self.settings.superset_cache_s),
                # Superset and its thread pools stay off the warehouse's own environment
                "PYTHONPATH": "",
            }
        )
        return env

    def secret_key(self) -> str:
        """Superset's secret key (it encrypts the stored warehouse password): made on the first
        start and kept. A home from an earlier version has it in its generated
        ``superset_config.py``: it moves to ``secret_key``, the old file is renamed
        ``superset_config.py.migrated`` and the old flat chart cache goes."""
        if self.secret_path.exists():
            key = self.secret_path.read_text().strip()
            if not key:  # a new key would make the stored warehouse password unreadable
                raise RuntimeError(f"{self.secret_path} is empty: restore the key")
            return key
        self.home.mkdir(parents=True, exist_ok=True)
        old = self.home / "superset_config.py"
        if not old.exists():
            key = secrets.token_urlsafe(42)
            write_atomic(self.secret_path, key + "\n", private=True)
            return key
        kept = _OLD_CONFIG_KEY.search(old.read_text())
        if not kept:
            raise RuntimeError(f"no SECRET_KEY = '...' line in {old}: restore it")
        write_atomic(self.secret_path, kept.group(1) + "\n", private=True)
        old.rename(old.with_name(old.name + ".migrated"))
        cache = self.home / "cache"  # now one directory per cache, each pruning its own
        for stale in cache.iterdir() if cache.is_dir() else []:
            if stale.is_file():
                stale.unlink()
        return kept.group(1)

    def admin_password(self) -> str:
        return self.password_path.read_text().strip()

    def initialise(self) -> str | None:
        """Secret key and metadata database made or migrated; the admin created on the first start.
        Returns the new admin password the first time (to print once), else None."""
        self.secret_key()
        superset = self.bin("superset")
        self._run([superset, "db", "upgrade"])
        new_password = None
        if not self.password_path.exists():
            new_password = secrets.token_urlsafe(16)
            self._run(
                [
                    superset, "fab", "create-admin", "--username", ADMIN_USER,
                    "--firstname", "Control", "--lastname", "Room",
                    "--email", "admin@localhost", "--password", new_password,
                ]
            )  # fmt: skip
            write_atomic(self.password_path, new_password + "\n", private=True)
        self._run([superset, "init"])
        return new_password

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )

    def start(self, log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Superset under gunicorn on the configured loopback address (not waited for)."""
        cmd = [
            self.bin("gunicorn"),
            "--bind", f"{self.settings.superset_host}:{self.settings.superset_port}",
            "--workers", str(self.settings.superset_workers),
            "--threads", str(self.settings.superset_threads),
            "--worker-class", "gthread",
            "--timeout", "120",
            "--limit-request-line", "0",
            "superset.app:create_app()",
        ]  # fmt: skip
        with open(log_path or self.home / "superset.log", "ab") as log:  # the child keeps it open
            return subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
