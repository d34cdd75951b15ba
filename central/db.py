"""PostgreSQL: connections and the idempotent migration command."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

_LEDGER = """
create table if not exists public.eiot_migrations (
    filename   text primary key,
    sha256     text not null,
    applied_at timestamptz not null default now()
)
"""
_LOCK_KEY = 0x45494F54  # "EIOT": one migrator at a time


def connect(dsn: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=5, **kwargs)  # type: ignore[arg-type]


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("central") / "sql"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text()) for p in files]


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist (laptop convenience). True if created."""
    params = conninfo_to_dict(dsn)
    name = params.get("dbname")
    if not name:
        return False
    try:
        connect(dsn).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = make_conninfo(dsn, dbname="postgres")
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(str(name))))
    log.info("created database %s", name)
    return True


def migrate(dsn: str) -> list[str]:
    """Apply the ``central/sql/*.sql`` files not applied yet, in name order. Idempotent."""
    applied: list[str] = []
    with connect(dsn) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_LEDGER)
            conn.commit()
            done = {
                name: digest
                for name, digest in conn.execute(
                    "select filename, sha256 from public.eiot_migrations"
                )
            }
            for name, text in migration_files():
                digest = hashlib.sha256(text.encode()).hexdigest()
                if name in done:
                    if done[name] != digest:
                        log.warning("migration %s changed since it was applied", name)
                    continue
                with conn.transaction():
                    conn.execute(text.encode())  # a whole file: no parameters, no quoting
                    conn.execute(
                        "insert into public.eiot_migrations (filename, sha256) values (%s, %s)",
                        (name, digest),
                    )
                applied.append(name)
                log.info("applied %s", name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
            conn.commit()
    return applied
