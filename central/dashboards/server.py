"""Superset's home and process: its config, metadata database, admin login, and the server.

The home (``var/superset``) holds a generated ``superset_config.py`` (a random secret key; the
metadata database in SQLite beside it) and the generated admin password (mode 0600). Nothing in
it is a default: a fresh home gets fresh secrets.
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

ADMIN_USER = "admin"
CONFIG_TEMPLATE = """\
# Written by central.dashboards at each start; holds this instance's secret key, made on the
# first start and kept. The rest follows the settings (central/dashboards/settings.py, via the
# environment).
import json
import logging
import os

from superset.utils.log import AbstractEventLogger

SECRET_KEY = {secret!r}
SQLALCHEMY_DATABASE_URI = {metadata_uri!r}
FEATURE_FLAGS = {{"DASHBOARD_CROSS_FILTERS": True, "DRILL_TO_DETAIL": True}}
# No basemap token: deck.gl layers draw on OpenStreetMap tiles (blank when offline).
MAPBOX_API_KEY = ""
# A content security policy of our own: pages load only from Superset itself, and images and
# map tiles from the OpenStreetMap tile hosts deck.gl draws on. Superset's default policy lets
# its menu load a telemetry pixel from a third-party host; this one blocks it (a control room
# on a metered link reports to nobody). TLS is the business of the proxy in front.
TALISMAN_ENABLED = True
TALISMAN_CONFIG = {{
    "content_security_policy": {{
        "base-uri": ["'self'"],
        "default-src": ["'self'"],
        "img-src": ["'self'", "blob:", "data:", "https://tile.openstreetmap.org"],
        "connect-src": ["'self'", "https://tile.openstreetmap.org"],
        "worker-src": ["'self'", "blob:"],
        "object-src": "'none'",
        "style-src": ["'self'", "'unsafe-inline'"],
        "font-src": ["'self'"],
        "script-src": ["'self'", "'strict-dynamic'"],
    }},
    "content_security_policy_nonce_in": ["script-src"],
    "force_https": False,
    "session_cookie_secure": False,
}}
WTF_CSRF_ENABLED = True
# Who opened which dashboard and chart goes to Superset's log (JSON lines on the logger
# eiot.audit), not to its metadata database: Superset's default event logger inserts a row and
# commits for every request, a large share of the server's work per chart on SQLite.
class AuditLogger(AbstractEventLogger):
    def log(self, user_id, action, dashboard_id, duration_ms, slice_id, referrer,
            curated_payload, curated_form_data, *args, **kwargs):
        logging.getLogger("eiot.audit").info(json.dumps({{
            "user_id": user_id, "action": action, "dashboard_id": dashboard_id,
            "slice_id": slice_id, "duration_ms": duration_ms}}, default=str))


EVENT_LOGGER = AuditLogger()
SQLLAB_CTAS_NO_LIMIT = False
ROW_LIMIT = 50000
# Chart results are cached (superset_cache_s; the marts change at most every refresh), so
# analysts opening the same dashboard share one warehouse query; filter states live beside it.
DATA_CACHE_CONFIG = {{
    "CACHE_TYPE": "FileSystemCache",
    "CACHE_DIR": {cache_dir!r},
    "CACHE_DEFAULT_TIMEOUT": int(os.environ["EIOT_SUPERSET_CACHE_S"]),
    "CACHE_THRESHOLD": 5000,
}}
FILTER_STATE_CACHE_CONFIG = {{**DATA_CACHE_CONFIG, "CACHE_KEY_PREFIX": "filter_state_"}}
EXPLORE_FORM_DATA_CACHE_CONFIG = {{**DATA_CACHE_CONFIG, "CACHE_KEY_PREFIX": "form_data_"}}

# A site's own settings (e.g. SQLALCHEMY_DATABASE_URI on PostgreSQL) go in
# superset_config_local.py beside this file, which is never rewritten.
_LOCAL = os.path.join(os.path.dirname(__file__), "superset_config_local.py")
if os.path.exists(_LOCAL):
    with open(_LOCAL) as _f:
        exec(compile(_f.read(), _LOCAL, "exec"))
"""


@dataclass(frozen=True)
class SupersetHome:
    settings: DashboardSettings

    @property
    def home(self) -> Path:
        return self.settings.superset_home

    @property
    def config_path(self) -> Path:
        return self.home / "superset_config.py"

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
                "SUPERSET_CONFIG_PATH": str(self.config_path),
                "SUPERSET_HOME": str(self.home),
                "FLASK_APP": "superset.app:create_app()",
                "SUPERSET_LOAD_EXAMPLES": "no",
                "EIOT_SUPERSET_CACHE_S": str(self.settings.superset_cache_s),
                # Superset and its thread pools stay off the warehouse's own environment
                "PYTHONPATH": "",
            }
        )
        return env

    def write_config(self) -> None:
        """Superset's config, from this version of the template at each start; its secret key
        (which encrypts the stored warehouse password) is made once and kept."""
        self.home.mkdir(parents=True, exist_ok=True)
        old = self.config_path.read_text() if self.config_path.exists() else ""
        kept = re.search(r"^SECRET_KEY = '([^']+)'$", old, re.MULTILINE)
        if old and not kept:  # a new key would make the stored warehouse password unreadable
            raise RuntimeError(f"no SECRET_KEY = '...' line in {self.config_path}: restore it")
        config = CONFIG_TEMPLATE.format(
            secret=kept.group(1) if kept else secrets.token_urlsafe(42),
            metadata_uri=f"sqlite:///{self.home / 'superset.db'}",
            cache_dir=str(self.home / "cache"),
        )
        fresh = self.config_path.with_suffix(".new")  # replaced whole: a crash keeps the key
        fresh.touch(mode=0o600)
        fresh.chmod(0o600)
        fresh.write_text(config)
        os.replace(fresh, self.config_path)

    def admin_password(self) -> str:
        return self.password_path.read_text().strip()

    def initialise(self) -> str | None:
        """Config and metadata database made or migrated; the admin created on the first start.
        Returns the new admin password the first time (to print once), else None."""
        self.write_config()
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
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_password + "\n")
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
