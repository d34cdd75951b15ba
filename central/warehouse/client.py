"""How every part of the project reaches ClickHouse: a DSN, through clickhouse-connect.

* ``chdb:///abs/path``: the embedded engine. If an owner server (``central warehouse serve``)
  already holds that directory, the client goes through it over HTTP, since chDB lets only one
  process open a data directory; otherwise the engine is opened in this process.
* ``http(s)://host:port/db``: a ClickHouse server or cluster (or an owner server).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from central.warehouse.server import read_owner

# Sessions are always UTC, whatever the host's timezone: timestamps are UTC everywhere.
CLIENT_SETTINGS = {"session_timezone": "UTC"}


def chdb_path(dsn: str) -> Path | None:
    """The data directory of a ``chdb:///path`` DSN, or None for any other DSN."""
    if not dsn.startswith("chdb:"):
        return None
    parts = urlsplit(dsn)
    if parts.netloc and parts.netloc != "localhost":
        raise ValueError(f"use chdb:///absolute/path, not {dsn!r}")
    if not parts.path or parts.path == "/":
        raise ValueError(f"{dsn!r} names no data directory")
    return Path(parts.path)


def resolve_dsn(dsn: str) -> str:
    """The DSN to hand to clickhouse-connect: an embedded path held by an owner → its URL."""
    path = chdb_path(dsn)
    if path is None:
        return dsn
    owner = read_owner(path)
    if owner is not None:
        return str(owner["url"])
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path.resolve()}"


def connect(dsn: str, **kwargs: Any) -> Client:
    settings = {**CLIENT_SETTINGS, **kwargs.pop("settings", {})}
    resolved = resolve_dsn(dsn)
    if not resolved.startswith("chdb:"):
        kwargs.setdefault("send_receive_timeout", 600)
    return clickhouse_connect.get_client(dsn=resolved, settings=settings, **kwargs)


def wait_for_owner(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owner = read_owner(path)
        if owner is not None and int(owner["pid"]) == proc.pid:
            return str(owner["url"])
        if proc.poll() is not None:
            raise RuntimeError(f"warehouse owner exited with {proc.returncode} before serving")
        time.sleep(0.05)
    raise TimeoutError(f"no warehouse owner for {path} after {timeout_s:.0f}s")


def spawn_owner(
    path: Path, port: int = 0, host: str = "127.0.0.1", config_file: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``central warehouse serve`` for ``path`` in a child process; return it and its URL."""
    path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "central.warehouse", "warehouse", "serve", "--path", str(path)]
    cmd += ["--host", host, "--port", str(port)]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    proc = subprocess.Popen(cmd, env={**os.environ, "TZ": "UTC"}, start_new_session=True)
    try:
        return proc, wait_for_owner(path, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stop_owner(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def served(dsn: str) -> Iterator[str]:
    """An HTTP URL for ``dsn`` for the duration of the block.

    A server DSN is yielded as is. An embedded one uses its running owner, or starts an owner for
    the block and stops it afterwards (so dbt and other processes can reach the engine).
    """
    path = chdb_path(dsn)
    if path is None:
        yield dsn
        return
    owner = read_owner(path)
    if owner is not None:
        yield str(owner["url"])
        return
    proc, url = spawn_owner(path)
    try:
        yield url
    finally:
        stop_owner(proc)
