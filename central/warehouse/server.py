"""One process owns the embedded engine and serves it over ClickHouse's HTTP interface.

chDB locks its data directory to one process, yet the loader, dbt, the quality checks and the
dashboard server all need the warehouse during a demo. This module runs chDB in one *owner*
process and speaks the subset of ClickHouse's HTTP protocol that unmodified clients use
(clickhouse-connect, and so dbt-clickhouse's ``http`` driver, curl, Grafana's plugin...):

* ``GET /ping`` and ``GET /`` answer ``Ok.``;
* the query comes from the ``query`` URL parameter and/or the request body (``POST``), the
  database from ``database``, the default output format from ``default_format``, bind
  parameters from ``param_<name>``; any other parameter is a ClickHouse setting for that query;
* ``INSERT ... FORMAT <fmt>`` takes its data from the body (plain, chunked, and/or compressed
  with ``Content-Encoding`` gzip/deflate/zstd/lz4/br);
* ``session_id`` keeps state (``USE``, ``SET``, temporary tables) across requests;
* errors come back as HTTP 500 with ``X-ClickHouse-Exception-Code`` and ClickHouse's message.

It listens on 127.0.0.1 only, has no authentication and no TLS: a single-machine convenience,
never the production path (production runs a ClickHouse server; clients change a DSN only).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

OWNER_FILE = "eiot-owner.json"
SERVER_NAME = "eiot-chdb-owner"
MAX_BODY_BYTES = 4 * 1024**3

# Parameters the HTTP layer consumes itself; everything else is a per-query setting.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "user",
        "password",
        "quota_key",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "client_protocol_version",
        "role",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_response_buffer_size",
    }
)
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# INSERT INTO <target> [SETTINGS ...] FORMAT <fmt>, then the data.
INSERT_WITH_DATA = re.compile(
    rb"^\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>[A-Za-z][A-Za-z0-9_]*)",
    re.IGNORECASE | re.DOTALL,
)
TARGET_SETTINGS = re.compile(r"^(?P<target>.*?)\s+SETTINGS\s+(?P<settings>.+)$", re.I | re.S)
TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.IGNORECASE)
RESULT_STATEMENTS = ("select", "with", "show", "describe", "desc", "exists", "explain", "check")
ERROR_CODE = re.compile(r"Code: (\d+)\.")
LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)

CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}


class QueryError(Exception):
    """A ClickHouse error to report to the client with its code."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(data))
    if encoding == "zstd":
        try:  # Python 3.14's compression.zstd, else the backports.zstd package
            zstd: Any = importlib.import_module("compression.zstd")
        except ImportError:
            zstd = importlib.import_module("backports.zstd")
        return bytes(zstd.decompress(data))
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(data))
    raise QueryError(f"Unknown Content-Encoding {encoding!r}", code=48)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _settings_sql(settings: dict[str, str]) -> list[str]:
    statements = []
    for name, value in settings.items():
        if not SETTING_NAME.match(name):
            raise QueryError(f"Invalid setting name {name!r}", code=115)
        statements.append(f"SET {name} = {_quote(value)}")
    return statements


def _is_result_statement(sql: str) -> bool:
    head = LEADING_COMMENTS.sub("", sql, count=1).lstrip("(").lower()
    return head.startswith(RESULT_STATEMENTS)


@dataclass
class Handle:
    """One chDB connection: its own session state (database, settings, temporary tables)."""

    conn: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    database: str | None = None
    timeout_s: float = 60.0
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    body: bytes
    fmt: str | None
    summary: dict[str, str]


class Engine:
    """The embedded engine of one data directory, shared by all requests of this process."""

    def __init__(
        self,
        path: Path,
        default_settings: dict[str, str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        import chdb

        self._chdb: Any = chdb  # its connect() is not annotated
        self.path = path.resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.conn_str = str(self.path)
        if config_file is not None:
            # a ClickHouse server configuration file (e.g. clusters) the engine reads at start;
            # chDB ignores, without a word, a file it cannot find or whose path its connection
            # string mangles
            config = config_file.resolve()
            if not config.is_file():
                raise FileNotFoundError(f"no ClickHouse configuration file {config}")
            if set(str(config)) & set("&?#%"):
                raise ValueError(f"name the configuration file by a path without & ? # %: {config}")
            self.conn_str += f"?config-file={config}"
        # The anchor handle keeps the engine (and its directory lock) for the life of the owner.
        self._anchor = self._chdb.connect(self.conn_str)
        self.version = self._anchor.query("SELECT version()", "TabSeparated").bytes().decode()
        self.version = self.version.strip()
        self.default_settings = {"session_timezone": "UTC", **(default_settings or {})}
        self.sessions: dict[str, Handle] = {}
        self._sessions_lock = threading.Lock()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="eiot-chdb-insert-"))

    # -- handles -------------------------------------------------------------------------------

    def _new_handle(self) -> Handle:
        handle = Handle(self._chdb.connect(self.conn_str))
        for statement in _settings_sql(self.default_settings):
            handle.conn.query(statement, "TabSeparated")
        return handle

    @contextlib.contextmanager
    def handle(self, session_id: str | None, timeout_s: float) -> Iterator[Handle]:
        if not session_id:
            handle = self._new_handle()
            try:
                yield handle
            finally:
                handle.conn.close()
            return
        with self._sessions_lock:
            found = self.sessions.get(session_id)
            if found is None:
                found = self.sessions[session_id] = self._new_handle()
            handle = found
        with handle.lock:
            handle.timeout_s = timeout_s
            handle.last_used = time.monotonic()
            try:
                yield handle
            finally:
                handle.last_used = time.monotonic()

    def expire_sessions(self) -> None:
        now = time.monotonic()
        with self._sessions_lock:
            expired = [
                sid
                for sid, h in self.sessions.items()
                if now - h.last_used > h.timeout_s and not h.lock.locked()
            ]
            handles = [self.sessions.pop(sid) for sid in expired]
        for h in handles:
            with contextlib.suppress(Exception):
                h.conn.close()

    def close(self) -> None:
        with self._sessions_lock:
            handles = list(self.sessions.values())
            self.sessions.clear()
        for h in handles:
            with contextlib.suppress(Exception):
                h.conn.close()
        with contextlib.suppress(Exception):
            self._anchor.close()
        with contextlib.suppress(OSError):
            os.rmdir(self.tmp_dir)

    # -- execution -----------------------------------------------------------------------------

    def _query(self, handle: Handle, sql: str, fmt: str, params: dict[str, str]) -> Any:
        try:
            return handle.conn.query(sql, fmt, params=params)
        except Exception as exc:  # chdb raises its own error type with ClickHouse's message
            message = str(exc)
            start = message.find("Code: ")
            message = message[start:] if start >= 0 else message
            match = ERROR_CODE.search(message)
            raise QueryError(message.strip(), int(match.group(1)) if match else 1002) from None

    def execute(
        self,
        handle: Handle,
        text: bytes,
        data: bytes | None,
        database: str | None,
        settings: dict[str, str],
        params: dict[str, str],
        default_format: str,
    ) -> Outcome:
        """Run one request on one handle. ``data`` is insert data given apart from the query."""
        if database and database != handle.database:
            self._query(handle, f"USE `{database.replace('`', '')}`", "TabSeparated", {})
            handle.database = database
        previous: dict[str, tuple[str, bool]] = {}
        if settings:
            previous = self._snapshot(handle, settings)
        try:
            for statement in _settings_sql(settings):
                self._query(handle, statement, "TabSeparated", {})
            return self._run(handle, text, data, params, default_format)
        finally:
            if previous:
                self._restore(handle, previous)

    def _snapshot(self, handle: Handle, settings: dict[str, str]) -> dict[str, tuple[str, bool]]:
        names = ", ".join(_quote(n) for n in settings if SETTING_NAME.match(n))
        if not names:
            return {}
        result = self._query(
            handle,
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
            "JSONEachRow",
            {},
        )
        snapshot = {name: ("", False) for name in settings}
        for line in result.bytes().splitlines():
            row = json.loads(line)
            snapshot[row["name"]] = (row["value"], bool(row["changed"]))
        return snapshot

    def _restore(self, handle: Handle, snapshot: dict[str, tuple[str, bool]]) -> None:
        for name, (value, changed) in snapshot.items():
            statement = f"SET {name} = {_quote(value)}" if changed else f"SET {name} = DEFAULT"
            with contextlib.suppress(QueryError):
                self._query(handle, statement, "TabSeparated", {})

    def _run(
        self, handle: Handle, text: bytes, data: bytes | None, params: dict[str, str], fmt: str
    ) -> Outcome:
        match = INSERT_WITH_DATA.match(text[:65536])
        if match:
            if data is None:
                data = text[match.end() :]
                data = data.lstrip(b" \t")
                if data.startswith(b"\r\n"):
                    data = data[2:]
                elif data.startswith(b"\n"):
                    data = data[1:]
            target = match.group("target").decode()
            return self._insert(handle, target, match.group("fmt").decode(), data)
        sql = text.decode("utf-8", errors="replace")
        if data:
            sql = f"{sql}\n{data.decode('utf-8', errors='replace')}"
        if not sql.strip():
            raise QueryError("Empty query", code=62)
        trailing = TRAILING_FORMAT.search(sql)
        result = self._query(handle, sql, fmt, params)
        body = result.bytes() or b""
        out_fmt = trailing.group(1) if trailing else fmt
        return Outcome(
            body=body,
            fmt=out_fmt if (trailing or _is_result_statement(sql)) else None,
            summary=_summary(result, written=False, result_bytes=len(body)),
        )

    def _insert(self, handle: Handle, target: str, fmt: str, data: bytes) -> Outcome:
        clause = ""
        found = TARGET_SETTINGS.match(target)
        if found and "(" not in found.group("settings"):
            target, clause = found.group("target"), f" SETTINGS {found.group('settings')}"
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=f".{fmt.lower()}")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            sql = f"INSERT INTO {target} FROM INFILE {_quote(name)}{clause} FORMAT {fmt}"
            result = self._query(handle, sql, "TabSeparated", {})
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)
        return Outcome(body=b"", fmt=None, summary=_summary(result, written=True))


def _summary(result: Any, written: bool, result_bytes: int = 0) -> dict[str, str]:
    try:
        rows, nbytes = int(result.rows_read()), int(result.bytes_read())
        elapsed_ns = int(result.elapsed() * 1e9)
    except Exception:
        return {}
    summary = {
        "read_rows": "0" if written else str(rows),
        "read_bytes": "0" if written else str(nbytes),
        "written_rows": str(rows) if written else "0",
        "written_bytes": str(nbytes) if written else "0",
        "total_rows_to_read": "0" if written else str(rows),
        "result_rows": "0",
        "result_bytes": str(result_bytes),
        "elapsed_ns": str(elapsed_ns),
    }
    return summary


class OwnerHandler(BaseHTTPRequestHandler):
    """ClickHouse's HTTP interface, as far as ordinary clients use it."""

    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    server: OwnerServer
    # Headers and body leave in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers (~40 ms) on every answer of a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._reply(HTTPStatus.OK, b"", {"Content-Type": "text/html; charset=UTF-8"}, head=True)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise QueryError("Request body too large", code=241)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise QueryError("Request body too large", code=241)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        query_id = ""
        try:
            url = urlsplit(self.path)
            body = self._read_body()
            if url.path.rstrip("/") in ("/ping", "/replicas_status"):
                self._reply(HTTPStatus.OK, b"Ok.\n", {"Content-Type": "text/plain"})
                return
            if url.path not in ("/", ""):
                raise QueryError(f"Unknown handler {url.path}", code=1002)
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                raise QueryError("External data (multipart) is not supported", code=48)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            query = params.pop("query", "")
            query_id = params.pop("query_id", "") or str(uuid.uuid4())
            if self.command == "GET" and not query and not body:
                self._reply(HTTPStatus.OK, b"Ok.\n", {"Content-Type": "text/plain"})
                return
            if params.get("decompress") in ("1", "true"):
                raise QueryError("ClickHouse native compression is not supported", code=48)
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            outcome = self._execute(query, body, params)
        except QueryError as exc:
            message = f"{exc}" if str(exc).startswith("Code:") else f"Code: {exc.code}. {exc}"
            message = f"{message} (version {self.server.engine.version})\n"
            self._reply(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                message.encode(),
                {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(exc.code),
                    "X-ClickHouse-Query-Id": query_id,
                },
            )
            return
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        headers = {
            "Content-Type": CONTENT_TYPES.get(outcome.fmt or "", "application/octet-stream"),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(outcome.summary, separators=(",", ":")),
        }
        if outcome.fmt:
            headers["X-ClickHouse-Format"] = outcome.fmt
        if outcome.fmt is None and not outcome.body:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._reply(HTTPStatus.OK, outcome.body, headers)

    def _execute(self, query: str, body: bytes, params: dict[str, str]) -> Outcome:
        engine = self.server.engine
        database = params.pop("database", None) or None
        default_format = params.pop("default_format", "") or "TabSeparated"
        session_id = params.pop("session_id", None) or None
        try:
            timeout_s = float(params.pop("session_timeout", "60") or 60)
        except ValueError:
            timeout_s = 60.0
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v
            for k, v in params.items()
            if k not in TRANSPORT_PARAMS and not k.startswith("param_")
        }
        if query:
            text, data = query.encode(), (body or None)
            if data is not None and not INSERT_WITH_DATA.match(text):
                text, data = text + b"\n" + data, None
        else:
            text, data = body, None
        with engine.handle(session_id, timeout_s) as handle:
            return engine.execute(handle, text, data, database, settings, bind, default_format)

    def _reply(
        self, status: HTTPStatus, body: bytes, headers: dict[str, str], head: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("X-ClickHouse-Server-Display-Name", SERVER_NAME)
        self.send_header("X-ClickHouse-Timezone", "UTC")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)


class OwnerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8124) -> None:
        self.engine = engine
        super().__init__((host, port), OwnerHandler)
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._expire_loop, daemon=True)
        self._janitor.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"

    def _expire_loop(self) -> None:
        while not self._stop.wait(5.0):
            self.engine.expire_sessions()

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


# -- owner file: how other processes of this machine find the owner of a data directory -------


def owner_file(path: Path) -> Path:
    return path.resolve() / OWNER_FILE


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner of ``path`` if one is alive, else None (a stale file is ignored)."""
    try:
        info = json.loads(owner_file(path).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return dict(info)


def write_owner(path: Path, url: str) -> None:
    target = owner_file(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": time.time()}))
    os.replace(tmp, target)


def remove_owner(path: Path) -> None:
    info = read_owner(path)
    if info is None or int(info["pid"]) == os.getpid():
        with contextlib.suppress(OSError):
            owner_file(path).unlink()


def serve(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 8124,
    ready: Any = None,
    config_file: Path | None = None,
) -> None:
    """Own ``path`` and serve it until interrupted (SIGINT/SIGTERM); ``config_file``: a
    ClickHouse configuration file the engine reads."""
    import signal

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the owner server is a single-machine convenience: bind to 127.0.0.1")
    engine = Engine(path, config_file=config_file)
    server = OwnerServer(engine, host, port)

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, _stop)
    write_owner(path, server.url)
    log.info("serving %s on %s", path, server.url)
    if ready is not None:
        ready(server.url)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_owner(path)
        server.server_close()
        engine.close()
