"""Least privilege in PostgreSQL (central/sql/0008_roles.sql, central/roles.py), with real
connections as a login of each group role: each does its own work and is refused the others'.

Roles are cluster-wide: every test makes logins with names of its own and drops them at the end
(after DROP OWNED BY in the test database, so nothing can hold them)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors, sql

from central import roles, store
from central.db import migrate, migration_files
from central.ingest import IngestWorker
from central.pki import Pki
from central.settings import CentralSettings
from central.warehouse import loader
from edge_agent import wire
from ml import ranking, registry
from tests.support.logins import Login, logins
from tests.support.processes import BROKER_PORT, PG_ADMIN_DSN

pytestmark = pytest.mark.services

DENIED = errors.InsufficientPrivilege
ROLES_SQL = "0008_roles.sql"


@pytest.fixture
def login(pg_dsn: str) -> Iterator[Login]:
    """Make logins (a member of the given group role, or of none) in the test's database."""
    with logins(pg_dsn) as make:
        yield make


def batch(batch_id: str, readings: list[dict[str, Any]]) -> wire.BatchEnvelope:
    return wire.BatchEnvelope.model_validate(
        {
            "schema": "readings.v1",
            "gateway_id": "gw1",
            "batch_id": batch_id,
            "batch_seq": 1,
            "sent_at": "2026-03-02T00:00:00Z",
            "readings": readings,
        }
    )


def rd(meter: str, k: int, kwh: float = 0.5) -> dict[str, Any]:
    ts = datetime.fromtimestamp(1_772_323_200 + 1800 * (k + 1), UTC)
    return {"meter_id": meter, "ts": wire.iso_z(ts), "kwh": kwh}


def refused(dsn: str, statement: str) -> None:
    """``statement`` run as the login of ``dsn`` is refused for want of a privilege."""
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(DENIED):
        conn.execute(statement)


def seed(pg: psycopg.Connection) -> None:
    """One registry meter and reading, one ranking run (as the owner)."""
    pg.execute("insert into raw.grid_assets (asset_id, asset_type) values ('r1', 'region')")
    pg.execute("insert into raw.meters (meter_id, region) values ('m1', 'r1')")
    with psycopg.connect(pg.info.dsn) as conn:
        store.store_batch(conn, batch("seed", [rd("m1", 100)]), "t")
    pg.execute(
        "insert into ml.ranking_runs (run_id, window_start, window_end, scorer, customers)"
        " values ('run-1', now() - interval '1 day', now(), 'peer', 1)"
    )
    pg.execute(
        "insert into ml.customer_rankings (run_id, rank, meter_id, score)"
        " values ('run-1', 1, 'm1', 3)"
    )


# What no role but the owner may do; each role's test adds what it must not do on top.
DDL = [
    "create table raw.evil (x int)",
    "create table public.evil (x int)",
    "create schema evil",
    "alter table raw.readings add column evil int",
    "drop table raw.readings",
    "truncate raw.readings",
]


def test_ingest_stores_batches_alerts_status_and_nothing_else(
    pg_dsn: str, pg: psycopg.Connection, login: Login
) -> None:
    dsn = login(roles.INGEST)
    pg.execute("insert into raw.meters (meter_id) values ('m1')")
    with psycopg.connect(dsn) as conn:
        assert not roles.is_superuser(conn)
        first = store.store_batch(conn, batch("b-1", [rd("m1", k) for k in range(5)]), "t")
        replay = store.store_batch(conn, batch("b-1", [rd("m1", k) for k in range(5)]), "t")
        # a duplicate, a conflict (read back, quarantined through the bigserial) and a new row
        mixed = [rd("m1", 0), rd("m1", 1, 0.9), rd("m1", 5), {"meter_id": "m1", "kwh": -1}]
        second = store.store_batch(conn, batch("b-2", mixed), "t")
        # the ingest worker's other writes: a status, an alert, a message quarantined whole
        worker = IngestWorker(CentralSettings(pg_dsn=dsn, broker_port=BROKER_PORT))
        status = {"schema": "status.v1", "gateway_id": "gw1", "state": "online"}
        status["sent_at"] = "2026-03-02T00:00:00Z"
        worker.handle(conn, "eiot/v1/gw/gw1/status", json.dumps(status).encode())
        alert = wire.Alert(
            alert_id="a1", gateway_id="gw1", meter_id="m1", ts=rd("m1", 0)["ts"], kind="tamper"
        )
        worker.handle(conn, "eiot/v1/gw/gw1/alerts", wire.encode_model(alert, compress=False))
        worker.handle(conn, "eiot/v1/gw/gw1/readings", b"{oops")
        # the meter registry, for the ownership check
        assert conn.execute("select count(*) from raw.meters").fetchone() == (1,)
    assert first.ack is not None and first.ack.inserted == 5
    assert replay.replay and replay.ack == first.ack
    assert second.ack is not None
    assert (second.ack.inserted, second.ack.duplicates, second.ack.conflicts) == (1, 1, 1)
    assert second.ack.quarantined == 2
    assert pg.execute("select count(*) from raw.readings").fetchone() == (6,)
    reasons = {r for (r,) in pg.execute("select split_part(reason, ':', 1) from raw.quarantine")}
    assert {"conflict", "invalid", "malformed_json"} <= reasons
    assert pg.execute("select count(*) from raw.gateway_status").fetchone() == (1,)
    assert pg.execute("select count(*) from raw.alerts where alert_id = 'a1'").fetchone() == (1,)

    for statement in [
        "delete from raw.readings",
        "update raw.readings set kwh = 0",
        "update raw.ingest_batches set status = 'rejected'",
        "delete from raw.ingest_batches",
        "select * from raw.quarantine",
        "update raw.quarantine set reason = 'x'",
        "select * from raw.alerts",
        "select alert_id, detail from raw.alerts",
        "delete from raw.alerts",
        "insert into raw.meters (meter_id) values ('m9')",
        "update raw.meters set region = 'x'",
        "select * from ml.models",
        "select * from ml.inspection_list",
        "insert into ml.ranking_runs (run_id, window_start, window_end, scorer, customers)"
        " values ('x', now(), now(), 'peer', 0)",
        "select setval('raw.quarantine_quarantine_id_seq', 1)",
        *DDL,
    ]:
        refused(dsn, statement)


def test_loader_reads_raw_with_its_copy_and_watermark_only(
    pg_dsn: str, pg: psycopg.Connection, login: Login
) -> None:
    seed(pg)
    dsn = login(roles.LOADER)
    ingest = psycopg.connect(login(roles.INGEST))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("set timezone = 'UTC'")
            assert conn.execute("select count(*) from raw.readings").fetchone() == (1,)
            lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
            for spec in loader.TABLE_SPECS.values():
                with conn.cursor().copy(spec.copy_sql(), (lo, hi)) as copy:
                    b"".join(bytes(chunk) for chunk in copy)
            # Another role's open transaction holds the watermark back: the loader sees its
            # xact_start (pg_read_all_stats), or it would read past rows not yet committed.
            ingest.execute("select 1 from raw.meters")  # a transaction opens, stays open
            started = ingest.execute("select now()").fetchone()
            assert started is not None
            assert loader.upper_bound(conn) <= started[0]
    finally:
        ingest.close()

    for statement in [
        "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id)"
        " values ('m1', now(), 1800, 1, 'g', 'b')",
        "insert into raw.meters (meter_id) values ('m9')",
        "update raw.meters set region = 'x'",
        "delete from raw.quarantine",
        "select * from ml.inspection_list",
        "select * from ml.models",
        "create temp table t (x int)",
        *DDL,
    ]:
        refused(dsn, statement)


def test_ml_ranks_and_registers_but_writes_no_raw(
    pg_dsn: str, pg: psycopg.Connection, login: Login
) -> None:
    seed(pg)
    dsn = login(roles.ML)
    message = {
        "name": "iforest",
        "version": "v1",
        "created_at": "2026-03-02T00:00:00Z",
        "sha256": "0" * 64,
        "feature_names": ["kwh"],
        "threshold": 0.5,
    }
    with psycopg.connect(dsn) as conn:
        assert ranking.latest_reading(conn) is not None
        assert conn.execute("select count(*) from raw.meters").fetchone() == (1,)
        run_id = ranking.store(
            conn,
            ranking.Ranking(
                window_start=datetime(2026, 3, 1, tzinfo=UTC),
                window_end=datetime(2026, 3, 2, tzinfo=UTC),
                model=None,
                members=[],
                unregistered=0,
                meter_ids=["m1"],
                scores=np.array([1.5]),
                reasons=[[]],
                customer_class=[""],
                region=["r1"],
                transformer_id=[""],
            ),
        )
        _, added = registry.register(conn, message)
        registry.mark_published(conn, "iforest", "v1", "eiot/v1/models/iforest")
        assert added and registry.registered(conn)[0]["topic"] == "eiot/v1/models/iforest"
        assert conn.execute("select run_id from ml.inspection_list").fetchone() == (run_id,)

    for statement in [
        "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id)"
        " values ('m1', now(), 1800, 1, 'g', 'b')",
        "update raw.readings set kwh = 0",
        "delete from raw.readings",
        "update raw.meters set region = 'x'",
        "select * from raw.ingest_batches",
        "select * from raw.quarantine",
        "delete from ml.ranking_runs",
        "update ml.ranking_runs set customers = 0",
        "update ml.models set message = '{}', threshold = 0",
        "delete from ml.models",
        "create table ml.evil (x int)",
        *DDL,
    ]:
        refused(dsn, statement)


def test_dashboard_reads_the_inspection_list_only(
    pg_dsn: str, pg: psycopg.Connection, login: Login
) -> None:
    seed(pg)
    dsn = login(roles.DASHBOARD)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select meter_id, rank, region from ml.inspection_list").fetchall()
    assert rows == [("m1", 1, None)]

    for statement in [
        "select * from raw.readings",
        "select * from raw.meters",
        "select * from raw.grid_assets",
        "select * from ml.customer_rankings",
        "select * from ml.ranking_runs",
        "select * from ml.models",
        "insert into ml.ranking_runs (run_id, window_start, window_end, scorer, customers)"
        " values ('x', now(), now(), 'peer', 0)",
        "create view ml.evil as select 1",
        *DDL,
    ]:
        refused(dsn, statement)


def test_a_login_without_a_role_gets_nothing(pg_dsn: str, login: Login) -> None:
    dsn = login(None)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(dsn, connect_timeout=5)
    # Even allowed to connect (dropped with the login by DROP OWNED BY), it reads nothing.
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
        admin.execute(
            sql.SQL("grant connect on database {} to {}").format(
                sql.Identifier(str(admin.info.dbname)), sql.Identifier(str(name))
            )
        )
    for table in ["raw.readings", "raw.meters", "raw.quarantine", "ml.inspection_list"]:
        refused(dsn, f"select * from {table}")
    refused(dsn, "create temp table t (x int)")
    refused(dsn, "create table public.t (x int)")


def test_grants_are_exactly_the_table(pg: psycopg.Connection) -> None:
    """Every privilege granted to each role in raw and ml (tables, views, sequences, columns),
    against the documented set: no more, no less."""
    held = set(
        pg.execute(
            """
            select g.rolname, n.nspname || '.' || c.relname, lower(a.privilege_type)
            from pg_class c join pg_namespace n on n.oid = c.relnamespace,
                 aclexplode(c.relacl) a join pg_roles g on g.oid = a.grantee
            where n.nspname in ('raw', 'ml', 'ops') and g.rolname = any(%(roles)s)
            union
            select g.rolname, n.nspname || '.' || c.relname || '.' || t.attname,
                   lower(a.privilege_type)
            from pg_attribute t join pg_class c on c.oid = t.attrelid
                 join pg_namespace n on n.oid = c.relnamespace,
                 aclexplode(t.attacl) a join pg_roles g on g.oid = a.grantee
            where n.nspname in ('raw', 'ml', 'ops') and g.rolname = any(%(roles)s)
            """,
            {"roles": list(roles.ROLES)},
        ).fetchall()
    )
    raw = ["readings", "quarantine", "ingest_batches", "gateway_status", "grid_assets", "meters"]
    counts = ("inserted", "duplicates", "conflicts", "quarantined", "ack")
    expected = {
        *{("eiot_ingest", "raw.readings", p) for p in ("select", "insert")},
        *{("eiot_ingest", "raw.ingest_batches", p) for p in ("select", "insert")},
        *{("eiot_ingest", f"raw.ingest_batches.{c}", "update") for c in counts},
        *{("eiot_ingest", f"raw.{t}", "insert") for t in ("quarantine", "gateway_status")},
        ("eiot_ingest", "raw.alerts", "insert"),
        ("eiot_ingest", "raw.alerts.alert_id", "select"),
        ("eiot_ingest", "raw.alerts.gateway_id", "select"),  # the key: 0010_alerts_per_gateway.sql
        ("eiot_ingest", "raw.quarantine_quarantine_id_seq", "usage"),
        ("eiot_ingest", "raw.meters", "select"),
        *{("eiot_loader", f"raw.{t}", "select") for t in [*raw, "alerts"]},
        # the warehouse lease (0020_warehouse_lease.sql): taken and released, never deleted
        *{("eiot_loader", "ops.leases", p) for p in ("select", "insert", "update")},
        ("eiot_ml", "raw.readings", "select"),
        ("eiot_ml", "raw.meters", "select"),
        ("eiot_ml", "raw.gateway_status", "select"),  # gateways' zones: 0016_meter_timezone.sql
        *{
            ("eiot_ml", f"ml.{t}", p)
            for t in ("models", "ranking_runs", "customer_rankings")
            for p in ("select", "insert")
        },
        *{
            ("eiot_ml", f"ml.models.{c}", "update")
            # the lifecycle's decision: 0021_ml_decision_grants.sql
            for c in (
                "published_at",
                "topic",
                "decision",
                "decided_at",
                "decision_reason",
                "evaluation",
            )
        },
        ("eiot_ml", "ml.inspection_list", "select"),
        ("eiot_dashboard", "ml.inspection_list", "select"),
    }
    assert held == expected
    databases = {
        (role, priv)
        for role in [*roles.ROLES, "public"]
        for priv in ("connect", "temporary", "create")
        if pg.execute(
            "select has_database_privilege(%s, current_database(), %s)", (role, priv)
        ).fetchone()
        == (True,)
    }
    assert databases == {(r, "connect") for r in roles.ROLES} | {("eiot_ingest", "temporary")}
    schemas = {
        (role, schema)
        for role in [*roles.ROLES, "public"]
        for schema in ("raw", "ml", "ops", "public")
        if pg.execute("select has_schema_privilege(%s, %s, 'create')", (role, schema)).fetchone()
        == (True,)
    }
    assert schemas == set()
    # no role owns anything, and none is more than a NOLOGIN group
    assert pg.execute(
        "select bool_or(rolcanlogin or rolsuper or rolcreaterole or rolcreatedb or rolbypassrls)"
        " from pg_roles where rolname = any(%s)",
        (list(roles.ROLES),),
    ).fetchone() == (False,)


def test_migrate_twice_and_the_roles_file_again(pg_dsn: str, pg: psycopg.Connection) -> None:
    assert migrate(pg_dsn) == []
    assert ROLES_SQL in {name for (name,) in pg.execute("select filename from eiot_migrations")}
    (text,) = [t for name, t in migration_files() if name == ROLES_SQL]
    pg.execute(text.encode())  # the file itself can run again: roles exist, grants repeat
    assert pg.execute(
        "select has_table_privilege('eiot_loader', 'raw.readings', 'select')"
    ).fetchone() == (True,)


def test_roles_file_on_a_second_database_of_the_cluster(pg_dsn: str) -> None:
    """The roles exist (pg_dsn's migration made them): a new database migrates and is granted."""
    name = f"eiot_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    try:
        assert ROLES_SQL in migrate(dsn)
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "select has_table_privilege('eiot_ingest', 'raw.readings', 'insert'),"
                " has_database_privilege('eiot_ingest', current_database(), 'temporary'),"
                " has_database_privilege('public', current_database(), 'connect')"
            ).fetchone() == (True, True, False)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def test_create_login_is_idempotent_and_moves_the_login(
    pg_dsn: str, pg: psycopg.Connection, login: Login
) -> None:
    dsn = login(roles.LOADER)
    user = str(psycopg.conninfo.conninfo_to_dict(dsn)["user"])

    def verifier() -> str:
        row = pg.execute("select rolpassword from pg_authid where rolname = %s", (user,)).fetchone()
        assert row is not None
        return str(row[0])

    before = verifier()
    roles.create_login(pg_dsn, user, roles.DASHBOARD, "new-password-1")  # again: another role
    # Hashed on the client: the server only ever saw a SCRAM verifier, now a new one.
    assert before.startswith("SCRAM-SHA-256$") and verifier() != before
    assert "new-password-1" not in verifier()
    # (The test cluster trusts 127.0.0.1, so the password is not what is checked here.)
    moved = roles.dsn_for(pg_dsn, user, "new-password-1")
    refused(moved, "select * from raw.readings")
    with psycopg.connect(moved) as conn:
        conn.execute("select * from ml.inspection_list")
        assert conn.execute("select current_user").fetchone() == (user,)
    admin = pg.execute("select current_user").fetchone()
    assert admin is not None and roles.is_superuser(pg)
    with pytest.raises(ValueError, match="superuser"):
        roles.create_login(pg_dsn, str(admin[0]), roles.LOADER, "x")
    with pytest.raises(ValueError, match="unknown role"):
        roles.create_login(pg_dsn, user, "postgres", "x")


def test_production_ingest_refuses_a_superuser_login(
    pg_dsn: str, pg: psycopg.Connection, login: Login, pki: Pki
) -> None:
    name, password = f"eiot_tsuper_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    pg.execute(
        sql.SQL("create role {} login superuser password {}").format(
            sql.Identifier(name), sql.Literal(password)
        )
    )
    try:
        production = CentralSettings(
            profile="production",
            pg_dsn=roles.dsn_for(pg_dsn, name, password),  # not called postgres, still super
            broker_tls=True,
            broker_ca_file=pki.ca_cert_path,
            broker_cert_file=pki.cert_path("svc-ingest-1"),
            broker_key_file=pki.key_path("svc-ingest-1"),
        )
        with pytest.raises(psycopg.OperationalError, match="superuser"):
            IngestWorker(production)._connection()
    finally:
        pg.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
    # Its own login is accepted, and the check leaves no transaction open: what it stores is
    # committed, seen by everyone else.
    worker = IngestWorker(production.model_copy(update={"pg_dsn": login(roles.INGEST)}))
    conn = worker._connection()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    status = {"schema": "status.v1", "gateway_id": "gw1", "state": "online"}
    status["sent_at"] = "2026-03-02T00:00:00Z"
    worker.handle(conn, "eiot/v1/gw/gw1/status", json.dumps(status).encode())
    assert pg.execute("select count(*) from raw.gateway_status").fetchone() == (1,)
    conn.close()
