"""PostgreSQL logins for tests: a member of one group role of ``central.roles`` (or of none),
with a name of its own, dropped at the end (roles are cluster-wide)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from central import roles

Login = Callable[[str | None], str]  # role (None: no role) -> DSN of a new login


@contextlib.contextmanager
def logins(admin_dsn: str) -> Iterator[Login]:
    """Make logins in the database of ``admin_dsn``; each is dropped on exit, after DROP OWNED
    BY in that database, so nothing can hold it."""
    made: list[str] = []
    tag = secrets.token_hex(4)

    def make(role: str | None) -> str:
        name = f"eiot_t{tag}_{len(made)}"
        password = secrets.token_urlsafe(16)
        made.append(name)
        if role is None:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("create role {} login password {}").format(
                        sql.Identifier(name), sql.Literal(password)
                    )
                )
        else:
            roles.create_login(admin_dsn, name, role, password)
        return roles.dsn_for(admin_dsn, name, password)

    try:
        yield make
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in made:
                admin.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                    (name,),
                )
                admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
                admin.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
