"""gateway_watch (central/orchestration/watch.py, the DAG gateway_watch) against a real
PostgreSQL, an embedded warehouse and the real secure broker: each condition from crafted raw
rows (odd ones included), one alert when a condition appears and one when it clears, only
svc-ops may publish operational alerts, and the DAG under Airflow's dag.test()."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central.local_services import SecureMosquitto
from central.orchestration import watch
from central.pki import Pki
from edge_agent import topics
from ml.registry import Broker, publish
from simulator.raw_db import scratch_database
from tests.support.processes import wait_until
from tests.support.secure import connect, identity_env

pytestmark = pytest.mark.services


def status(pending: float | str | None, accepted: int, models: bool, state: str = "online") -> Any:
    return {
        "schema": "status.v1",
        "state": state,
        "buffer": {"pending_readings": pending},
        "counters": {"readings_accepted": accepted},
        "models": [{"name": "iforest", "version": "v1"}] if models else [],
    }


def add_status(pg: psycopg.Connection, gw: str, minutes_ago: float, body: Any) -> None:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    pg.execute(
        "insert into raw.gateway_status (gateway_id, sent_at, received_at, state, status)"
        " values (%s, %s, %s, %s, %s)",
        (gw, at, at, body.get("state", "online"), json.dumps(body)),
    )


def add_quarantine(pg: psycopg.Connection, gw: str, rows: int, minutes_ago: float) -> None:
    pg.execute(
        "insert into raw.quarantine (raw, reason, received_at, stored_at, source, gateway_id)"
        " select 'x', 'invalid', %s, %s, 'test', %s from generate_series(1, %s)",
        (datetime.now(UTC) - timedelta(minutes=minutes_ago),) * 2 + (gw, rows),
    )


@pytest.fixture
def raw() -> Iterator[tuple[str, psycopg.Connection]]:
    with scratch_database("watch") as dsn, psycopg.connect(dsn, autocommit=True) as pg:
        yield dsn, pg


def crafted_fleet(pg: psycopg.Connection) -> None:
    for m in (25, 15, 5):  # healthy: scoring, nothing pending
        add_status(pg, "gw-ok", m, status(0, 100 * m, True))
    add_status(pg, "gw-silent", 40, status(10, 5, True))  # heard 40 min ago, then nothing
    # (minutes ago: the DAG judges them a minute or so later, within its 30-minute window)
    for m, pending in ((24, 100), (14, 400), (4, 900)):  # never drained, growing
        add_status(pg, "gw-backlog", m, status(pending, 1000 - m, True))
    for m, accepted in ((20, 10), (5, 200)):  # reading, but no model
        add_status(pg, "gw-noscore", m, status(0, accepted, False))
    # odd rows: numbers as strings, NULLs, not an object, a status from the future
    add_status(pg, "gw-odd", 20, status("lots", 5, True))
    add_status(pg, "gw-odd", 10, {"state": "online", "buffer": None, "counters": None})
    pg.execute(
        "insert into raw.gateway_status values ('gw-odd', %s, %s, 'online', '[1, 2]')",
        (datetime.now(UTC) - timedelta(minutes=4),) * 2,
    )
    add_status(pg, "gw-future", -120, status(0, 1, False))  # its only row is 2 h ahead
    add_quarantine(pg, "gw-ok", 120, 30)  # spike: 120 rows this hour, none the day before
    add_quarantine(pg, "gw-noisy", 60, 30)  # 60 this hour, but 100 an hour all day before
    add_quarantine(pg, "gw-noisy", 2400, 12 * 60)
    add_quarantine(pg, "gw-never-seen", 80, 10)  # no status ever: still watched


def test_each_condition_from_crafted_raw_rows(raw: tuple[str, psycopg.Connection]) -> None:
    dsn, pg = raw
    crafted_fleet(pg)
    found = watch.conditions(pg, datetime.now(UTC), watch.load_watch_settings(pg_dsn=dsn))
    assert sorted((c.gateway_id, c.kind) for c in found) == [
        ("gw-backlog", "backlog_growing"),
        ("gw-never-seen", "quarantine_spike"),
        ("gw-noscore", "scoring_nothing"),
        ("gw-ok", "quarantine_spike"),
        ("gw-silent", "silent"),
    ]


def test_alerts_open_once_and_resolve() -> None:
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    first = watch.changes([watch.Condition("gw-a", "silent", "quiet")], {}, now)
    assert [(a.kind, a.state, a.severity) for a in first] == [("silent", "open", "critical")]
    opened = {("gw-a", "silent"): (first[0].alert_id, now)}
    later = now + timedelta(minutes=5)
    assert watch.changes([watch.Condition("gw-a", "silent", "quiet")], opened, later) == []
    (resolved,) = watch.changes([], opened, later)
    assert (resolved.alert_id, resolved.state, resolved.opened_at) == (
        first[0].alert_id,
        "resolved",
        now,
    )
    assert json.loads(resolved.payload())["schema"] == "ops_alert.v1"


def test_only_svc_ops_publishes_operational_alerts(
    secure_broker: SecureMosquitto, pki: Pki, topic_root: str
) -> None:
    ops_topic = topics.ops_alerts(topic_root)
    reader = connect(pki, "svc-alerts-test", secure_broker.port)
    ops = connect(pki, "svc-ops", secure_broker.port)
    gateway = connect(pki, "gw-a", secure_broker.port)
    try:
        assert reader.subscribe(ops_topic) == 1
        assert gateway.subscribe(ops_topic) not in (0, 1), "a gateway reads ops alerts"
        gateway.publish(ops_topic, b"forged")
        ops.publish(topics.readings(topic_root, "gw-a"), b"{}")  # not its topic
        ops.publish(ops_topic, b"real")
        wait_until(lambda: reader.messages, 10, "the real ops alert")
        assert [m.payload for m in reader.messages] == [b"real"]
    finally:
        for c in (reader, ops, gateway):
            c.close()


def test_gateway_watch_dag_sends_once_and_records(
    raw: tuple[str, psycopg.Connection],
    secure_broker: SecureMosquitto,
    pki: Pki,
    topic_root: str,
    tmp_path: Path,
) -> None:
    from central.orchestration.identity import OPS, as_scope
    from tests.test_orchestration import DAGS, DRIVER, Airflow

    dsn, pg = raw
    crafted_fleet(pg)
    reader = connect(pki, "svc-alerts-test", secure_broker.port)
    assert reader.subscribe(topics.ops_alerts(topic_root)) == 1
    warehouse = f"chdb://{tmp_path / 'warehouse'}"
    # as compose runs it: svc-ops in the OPS scope; the plain identity (svc-models here) may
    # not publish operational alerts
    airflow = Airflow(
        tmp_path / "airflow",
        {
            "EIOT_PG_DSN": dsn,
            "EIOT_CLICKHOUSE_DSN": warehouse,
            "EIOT_TOPIC_ROOT": topic_root,
            **identity_env(pki, "svc-models", secure_broker.port),
            **as_scope(OPS, identity_env(pki, "svc-ops", secure_broker.port)),
        },
    )
    airflow.cli("db", "migrate")
    try:
        first = airflow.run(str(DRIVER), "test", str(DAGS), "gateway_watch")
        assert first["state"] == "success", first["tasks"]
        assert len(first["xcom"]["watch"]["opened"]) == 5
        assert not [k for k in first["xcom"] if ":" in k], "a dict return value is one XCom"
        wait_until(lambda: len(reader.messages) == 5, 10, "five ops alerts")
        alerts = [json.loads(m.payload) for m in reader.messages]
        assert {(a["gateway_id"], a["kind"], a["state"]) for a in alerts} >= {
            ("gw-silent", "silent", "open")
        }
        second = airflow.run(str(DRIVER), "test", str(DAGS), "gateway_watch")
        assert second["xcom"]["watch"]["opened"] == [] == second["xcom"]["watch"]["resolved"]

        pg.execute("delete from raw.quarantine where gateway_id = 'gw-never-seen'")
        settings = watch.load_watch_settings(
            pg_dsn=dsn, clickhouse_dsn=warehouse, topic_root=topic_root
        )
        ops = Broker.from_env(identity_env(pki, "svc-ops", secure_broker.port))
        third = watch.watch(settings, partial(publish, broker=ops))
        assert third["resolved"] == ["gw-never-seen quarantine_spike"] and third["opened"] == []
        wait_until(lambda: len(reader.messages) == 6, 10, "the resolution")
        last = json.loads(reader.messages[-1].payload)
        first_of_it = next(a for a in alerts if a["gateway_id"] == "gw-never-seen")
        assert (last["state"], last["alert_id"]) == ("resolved", first_of_it["alert_id"])
        time_ok = datetime.fromisoformat(last["at"]) >= datetime.fromisoformat(last["opened_at"])
        assert time_ok
    finally:
        reader.close()
    from central.warehouse.client import connect as ch_connect

    client = ch_connect(warehouse)
    try:
        rows = client.query(f"select state, count() from {watch.TABLE} group by state").result_rows
    finally:
        client.close()
    assert dict(rows) == {"open": 5, "resolved": 1}
