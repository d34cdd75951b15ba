"""Superset's configuration for the control-room dashboards: one file for `make dashboards`
(central/dashboards/server.py points SUPERSET_CONFIG_PATH here) and for docker-compose.yml's
Superset (docker/superset.Dockerfile copies it). What differs between the two comes from the
environment:

* SUPERSET_SECRET_KEY (required, no default): encrypts the warehouse password Superset stores;
  `make dashboards` makes it once and keeps it in var/superset/secret_key (mode 0600), compose
  takes it from .env;
* SUPERSET_HOME: where the metadata database (SQLite) and the chart cache live;
* EIOT_SUPERSET_CACHE_S: how long chart results are cached, in seconds (300 when unset).

A site's own settings (e.g. SQLALCHEMY_DATABASE_URI on PostgreSQL) go in
superset_config_local.py in SUPERSET_HOME, read last.

Superset's Python reads this file, not ours: it imports only Superset, its SQLAlchemy and the
standard library.
"""

import json
import logging
import os
import threading
import time

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from sqlglot.dialects.dialect import Dialect
from superset.utils.core import QuerySource
from superset.utils.log import AbstractEventLogger

# Superset parses every chart's SQL with sqlglot's ClickHouse dialect. sqlglot files a dialect
# class in its registry before it has finished building it (its metaclass registers the class,
# then gives it its tokenizer), and loads a dialect on first use: in a fresh worker, charts parsed
# on several threads at once could get the half-built class, whose tokenizer does not know
# backquotes ("Error parsing near '`'": a chart that does not draw). Loading the dialect here, as
# each worker reads this file and before its threads serve, leaves them only the finished class.
Dialect.get_or_raise("clickhouse")

_HOME = os.environ["SUPERSET_HOME"]
SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
SQLALCHEMY_DATABASE_URI = (
    "sqlite:///" + os.path.join(_HOME, "superset.db") + "?check_same_thread=false"
)
FEATURE_FLAGS = {"DASHBOARD_CROSS_FILTERS": True, "DRILL_TO_DETAIL": True}
# No basemap token: deck.gl layers draw on OpenStreetMap tiles (blank when offline).
MAPBOX_API_KEY = ""

# A content security policy of our own: pages load only from Superset itself, and images and
# map tiles from the OpenStreetMap tile hosts deck.gl draws on. Superset's default policy lets
# its menu load a telemetry pixel from a third-party host; this one blocks it (a control room
# on a metered link reports to nobody). TLS is the business of the proxy in front.
TALISMAN_ENABLED = True
TALISMAN_CONFIG = {
    "content_security_policy": {
        "base-uri": ["'self'"],
        "default-src": ["'self'"],
        "img-src": ["'self'", "blob:", "data:", "https://tile.openstreetmap.org"],
        "connect-src": ["'self'", "https://tile.openstreetmap.org"],
        "worker-src": ["'self'", "blob:"],
        "object-src": "'none'",
        "style-src": ["'self'", "'unsafe-inline'"],
        "font-src": ["'self'"],
        "script-src": ["'self'", "'strict-dynamic'"],
    },
    "content_security_policy_nonce_in": ["script-src"],
    "force_https": False,
    "session_cookie_secure": False,
}
WTF_CSRF_ENABLED = True


class AuditLogger(AbstractEventLogger):
    """Who opened which dashboard and chart goes to Superset's log (one JSON line per event on
    the logger eiot.audit), not to its metadata database: Superset's default event logger
    inserts a row and commits for every request, a large share of its work per chart on
    SQLite. The browser's own events (a dashboard mounted, a chart loaded or drawn) arrive in
    batches: one line each, as Superset's logger makes one row each."""

    def log(self, user_id, action, dashboard_id, duration_ms, slice_id, *args, **kwargs):
        audit = logging.getLogger("eiot.audit")
        for record in kwargs.get("records") or [{}]:
            event = {
                "user_id": user_id,
                "action": action,
                "event": record.get("event_name"),
                "dashboard_id": dashboard_id or record.get("dashboard_id"),
                "slice_id": slice_id or record.get("slice_id"),
                "duration_ms": duration_ms or record.get("duration"),
            }
            audit.info(json.dumps(event, default=str))


EVENT_LOGGER = AuditLogger()

# Superset opens a new warehouse connection for every query it runs (SQLAlchemy's NullPool, a
# new engine each time), and every chart request runs two (the default schema, then the data):
# with clickhouse-connect every new connection is a new client with its own handshake queries,
# a large share of Superset's work per chart. For charts and dashboards on ClickHouse, each
# worker process keeps the clients of each connection (address, user, password, options; up to
# 32 connections) and lends them, one request at a time, through the connection's `creator`:
# closing gives the client back, at most 8 wait idle, and none is used more than 10 minutes
# after it was made. Lent clients open no ClickHouse session, so nothing one request sets
# reaches the next, and a query left running on the server cannot lock the session of the next
# request. SQL Lab keeps a new client (and session) per query.
_LENT_SOURCES = {QuerySource.CHART, QuerySource.DASHBOARD}
_IDLE_MAX = 8
_CLIENT_LIFE_S = 600.0
_SHELVES_MAX = 32  # distinct connections (schema, user, password) lent from; others get NullPool
_lending_log = logging.getLogger("eiot.lending")


class _LentConnection:
    """A pooled DB-API connection as one request sees it: close() gives it back."""

    def __init__(self, conn, made, shelf):
        self._conn, self._made, self._shelf = conn, made, shelf

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            self._shelf.give_back(conn, self._made)

    def __getattr__(self, name):
        return getattr(self._conn, name)  # after close(): AttributeError on None


class _Shelf:
    """The idle clients of one connection in this worker process. Its lock is re-entrant:
    SQLAlchemy gives back a connection nobody closed from a garbage-collection callback, which
    can run in this thread while it holds the lock. Clients are closed outside the lock."""

    def __init__(self, uri, options):
        dialect = create_engine(uri, poolclass=NullPool, **options).dialect
        cargs, cparams = dialect.create_connect_args(uri)
        cparams.update(options.get("connect_args") or {})
        cparams["autogenerate_session_id"] = False
        self._connect = lambda: dialect.connect(*cargs, **cparams)
        self._idle = []  # (connection, monotonic time it was made)
        self._lock = threading.RLock()

    def lend(self):
        now = time.monotonic()
        expired = []
        found = None
        with self._lock:
            while self._idle and found is None:
                conn, made = self._idle.pop()
                if now - made < _CLIENT_LIFE_S:
                    found = (conn, made)
                else:
                    expired.append(conn)
        for conn in expired:
            conn.close()
        if found is None:
            found = (self._connect(), now)
            _lending_log.info("new warehouse client in worker %d", os.getpid())
        return _LentConnection(*found, self)

    def give_back(self, conn, made):
        with self._lock:
            if len(self._idle) < _IDLE_MAX and time.monotonic() - made < _CLIENT_LIFE_S:
                self._idle.append((conn, made))
                return
        conn.close()


_SHELVES = {}
_SHELVES_LOCK = threading.RLock()


def _lend_connections(uri, params, username, security_manager, source):
    if source not in _LENT_SOURCES or uri.get_backend_name() != "clickhousedb":
        return uri, params
    if "creator" in params:
        return uri, params
    key = json.dumps(
        [uri.render_as_string(hide_password=False), params], sort_keys=True, default=repr
    )
    with _SHELVES_LOCK:
        shelf = _SHELVES.get(key)
        if shelf is None and len(_SHELVES) < _SHELVES_MAX:
            options = {k: v for k, v in params.items() if k != "poolclass"}
            try:
                shelf = _SHELVES[key] = _Shelf(uri, options)
            except Exception:  # Superset's own error path reports it with the new engine
                _lending_log.exception("cannot lend clients for this connection")
                return uri, params
    if shelf is None:
        return uri, params
    return uri, {**params, "creator": shelf.lend}


DB_CONNECTION_MUTATOR = _lend_connections
SQLLAB_CTAS_NO_LIMIT = False
ROW_LIMIT = 50000

# Chart results are cached (the marts change at most every refresh), so analysts opening the
# same dashboard share one warehouse query. A timeout of 0 means no cache (to Flask-Caching, 0
# would mean "never expires").
_CACHE_S = int(os.environ.get("EIOT_SUPERSET_CACHE_S", "300"))


def _files(name: str, timeout_s: int, threshold: int, **more: object) -> dict[str, object]:
    """A file cache of its own under SUPERSET_HOME/cache (each prunes its own directory)."""
    return {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": os.path.join(_HOME, "cache", name),
        "CACHE_DEFAULT_TIMEOUT": timeout_s,
        "CACHE_THRESHOLD": threshold,
        **more,
    }


DATA_CACHE_CONFIG = _files("data", _CACHE_S, 5000) if _CACHE_S > 0 else {"CACHE_TYPE": "NullCache"}
# Filter states and explore states are what a dashboard's or chart's address points to (an
# analyst's filters, a shared link): kept 90 days from their last use, as Superset does,
# whatever the chart cache.
_STATE = {"REFRESH_TIMEOUT_ON_RETRIEVAL": True}
FILTER_STATE_CACHE_CONFIG = _files("filter_state", 90 * 24 * 3600, 50000, **_STATE)
EXPLORE_FORM_DATA_CACHE_CONFIG = _files("explore", 90 * 24 * 3600, 50000, **_STATE)

_LOCAL = os.path.join(_HOME, "superset_config_local.py")
if os.path.exists(_LOCAL):
    with open(_LOCAL) as _f:
        exec(compile(_f.read(), _LOCAL, "exec"))
