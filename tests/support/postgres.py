"""A private PostgreSQL for the tests that crash and restart the database: its own data
directory and port, always stopped and its data removed at the end, even on failure."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from central.db import migrate
from central.local_services import PrivatePostgres, postgres_user, reachable_by


@contextlib.contextmanager
def private_postgres(tmp: Path) -> Iterator[PrivatePostgres]:
    """A started private server with its data under ``tmp``; under a fresh directory in
    /var/tmp instead when the server's user cannot reach ``tmp`` (as root, pytest's tmp
    directories are 0700 root, closed to ``postgres``)."""
    if reachable_by(postgres_user(), tmp):
        base, own_base = tmp, False
    else:
        base, own_base = Path(tempfile.mkdtemp(prefix="eiot-test-pg-", dir="/var/tmp")), True
        base.chmod(0o755)  # mkdtemp makes it 0700: let the server's user in
    server = PrivatePostgres(base / "pg")
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")  # nothing in it to keep
        finally:
            shutil.rmtree(base if own_base else server.datadir, ignore_errors=True)


def migrated_database(server: PrivatePostgres, name: str = "eiot") -> str:
    """Create ``name`` on ``server`` and apply the migrations; return its DSN."""
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = server.dsn(name)
    migrate(dsn)
    return dsn
