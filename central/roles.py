"""PostgreSQL least privilege: the group roles of ``central/sql/0008_roles.sql`` and their logins.

Each service connects as a login of its own that is a member of exactly one group role, with
a password of its own; its DSN (:func:`dsn_for`) names that login, never the owner that runs
``central.db.migrate`` nor a superuser. What each group role may do is in the migration.

Passwords are never logged, and never sent to the server in clear text: :func:`create_login`
hashes them on the client (SCRAM-SHA-256 verifier, as ``psql``'s ``\\password`` does), so they
appear neither in ``pg_stat_activity`` nor in a statement log.
"""

from __future__ import annotations

import logging
from typing import Final

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

log = logging.getLogger(__name__)

INGEST: Final = "eiot_ingest"
LOADER: Final = "eiot_loader"
ML: Final = "eiot_ml"
DASHBOARD: Final = "eiot_dashboard"

#: The group roles (NOLOGIN) made by ``0008_roles.sql``, each with the one job it may do.
ROLES: Final[dict[str, str]] = {
    INGEST: "MQTT ingest worker: inserts into raw, reads back what it compares; no ml, no DDL",
    LOADER: "warehouse load and raw quality checks: SELECT on every raw table; the warehouse"
    " lease (ops.leases) of warehouse_refresh's runs",
    ML: "model registry and inspection ranking: reads raw.readings/raw.meters/raw.gateway_status,"
    " writes ml",
    DASHBOARD: "BI tools: SELECT on ml.inspection_list only",
}


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def create_login(admin_dsn: str, name: str, role: str, password: str) -> None:
    """Create the LOGIN role ``name`` (or update it: idempotent) with ``password``, as a member
    of the group role ``role`` and of no other group role of :data:`ROLES`.

    ``admin_dsn`` needs CREATEROLE (and ADMIN on ``role`` from PostgreSQL 16) or a superuser.
    Refuses to touch a superuser or one of the group roles themselves."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if name in ROLES:
        raise ValueError(f"{name!r} is a group role, not a login")
    if not password:
        raise ValueError("a login needs a password")
    ident = sql.Identifier(name)
    with _connect(admin_dsn) as conn:
        # The verifier is computed here (libpq PQencryptPasswordConn): the password itself
        # never reaches the server, its logs or pg_stat_activity.
        verifier = conn.pgconn.encrypt_password(
            password.encode(), name.encode(), b"scram-sha-256"
        ).decode()
        with conn.transaction():
            row = conn.execute(
                "select rolsuper from pg_roles where rolname = %s", (name,)
            ).fetchone()
            if row is not None and row[0]:
                raise ValueError(f"{name!r} is a superuser: not turned into a service login")
            verb = "create" if row is None else "alter"
            conn.execute(
                sql.SQL(
                    "{} role {} with login inherit nosuperuser nocreatedb nocreaterole"
                    " noreplication nobypassrls password {}"
                ).format(sql.SQL(verb), ident, sql.Literal(verifier))
            )
            groups = conn.execute(
                "select g.rolname from pg_auth_members m"
                " join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member"
                " where u.rolname = %s and g.rolname = any(%s)",
                (name, list(ROLES)),
            ).fetchall()
            for (other,) in groups:
                if other != role:
                    conn.execute(sql.SQL("revoke {} from {}").format(sql.Identifier(other), ident))
            conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(role), ident))
    log.info(
        "login %s: %s (member of %s)", name, "created" if verb == "create" else "updated", role
    )


def dsn_for(dsn: str, user: str, password: str) -> str:
    """``dsn`` (URL or key=value) with its user and password replaced: the DSN of a login."""
    return make_conninfo(dsn, user=user, password=password)


def is_superuser(conn: psycopg.Connection) -> bool:
    """True if the connection's current user is a superuser (a service should never be)."""
    row = conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()
    return bool(row is not None and row[0])
