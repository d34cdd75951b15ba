"""The Postgres → ClickHouse loader: incremental, bounded by open transactions, crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from central.warehouse.client import connect, spawn_owner, stop_owner
from central.warehouse.loader import load
from central.warehouse.schema import TABLES, read_watermark, write_watermark
from central.warehouse.settings import get_settings
from simulator.raw_db import scratch_database
from tests.support.warehouse import FIRST_RELEASE_METERS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.services  # real PostgreSQL


def insert_readings(dsn: str, meters: int, intervals: int, first_meter: int = 0) -> None:
    """``meters`` x ``intervals`` readings written by Postgres itself (fast, deterministic)."""
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute(
            """
            insert into raw.readings (meter_id, ts, interval_s, kwh, register_kwh, voltage_v,
                                      supply, flags, model_version, gateway_id, batch_id)
            select 'm' || m, timestamptz '2026-03-01' + i * interval '30 min', 1800,
                   ((m * 7 + i * 13) %% 100) / 100.0, i * 0.5,
                   case when i %% 11 = 0 then null else 230 end,
                   case when i %% 17 = 0 then 'off' else 'on' end,
                   case when i %% 29 = 0 then array['cover_open', 'magnetic']
                        else '{}'::text[] end,
                   case when m %% 2 = 0 then 'iforest-1' end,
                   'gw' || (m %% 3), 'b' || i
            from generate_series(%s::int, %s::int) m, generate_series(1, %s::int) i
            """,
            (first_meter, first_meter + meters - 1, intervals),
        )


def pg_totals(dsn: str) -> tuple[int, float, int]:
    with psycopg.connect(dsn) as pg:
        row = pg.execute(
            "select count(*), sum(kwh), sum(cardinality(flags)) from raw.readings"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0), int(row[2] or 0)


def ch_totals(dsn: str) -> tuple[int, float, int]:
    client = connect(dsn)
    try:
        row = client.query(
            "select count(), sum(kwh), sum(length(flags)) from raw.readings final"
        ).result_rows[0]
    finally:
        client.close()
    return int(row[0]), float(row[1]), int(row[2])


def assert_same_readings(pg_dsn: str, ch_dsn: str) -> None:
    """Counts, energy sums (to float rounding) and flag counts agree with Postgres."""
    pg_count, pg_kwh, pg_flags = pg_totals(pg_dsn)
    ch_count, ch_kwh, ch_flags = ch_totals(ch_dsn)
    assert (ch_count, ch_flags) == (pg_count, pg_flags)
    assert ch_kwh == pytest.approx(pg_kwh, rel=1e-12)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with scratch_database("wh_test") as dsn:
        yield dsn


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[str]:
    proc, url = spawn_owner(tmp_path / "warehouse")
    try:
        yield url
    finally:
        stop_owner(proc)


def test_a_column_added_to_an_older_warehouse_is_filled_by_its_next_load(
    pg_dsn: str, owner: str
) -> None:
    """A warehouse whose meters were loaded before load_shape and timezone existed gets them,
    filled for the rows it had, on its next load; the load after reads nothing again."""
    settings = get_settings(clickhouse_dsn=owner, pg_dsn=pg_dsn, load_overlap_s=0)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(
            "insert into raw.meters (meter_id, load_shape, timezone) "
            "values ('m0', 'intermittent', 'Africa/Nairobi'), ('m1', null, null)"
        )
    client = connect(owner)
    try:  # the older warehouse: both meters loaded, its watermark past them
        client.command("create database raw")
        client.command(FIRST_RELEASE_METERS.format(db="raw"))
        client.command(TABLES["load_watermarks"].format(db="raw"))
        client.command(
            "insert into raw.meters (meter_id, meter_role, updated_at, loaded_at) values "
            "('m0', 'customer', now64(3), now64(3)), ('m1', 'customer', now64(3), now64(3))"
        )
        write_watermark(client, "meters", datetime.now(UTC) + timedelta(seconds=1), 2)
    finally:
        client.close()
    time.sleep(1.1)  # PostgreSQL's rows are older than the old watermark
    first = {r.table: r.rows for r in load(settings)}
    assert first["meters"] == 2
    client = connect(owner)
    try:
        rows = client.query(
            "select meter_id, load_shape, timezone from raw.meters final order by meter_id"
        ).result_rows
    finally:
        client.close()
    assert rows == [("m0", "intermittent", "Africa/Nairobi"), ("m1", None, None)]
    assert {r.table: r.rows for r in load(settings)}["meters"] == 0


def test_incremental_loads_pick_up_new_rows_only(pg_dsn: str, owner: str) -> None:
    settings = get_settings(clickhouse_dsn=owner, pg_dsn=pg_dsn, load_overlap_s=0)
    insert_readings(pg_dsn, meters=20, intervals=48)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(
            "insert into raw.grid_assets (asset_id, asset_type) values ('F1', 'feeder');"
            "insert into raw.meters (meter_id, feeder_id) values ('m0', 'F1');"
            "insert into raw.alerts (alert_id, gateway_id, meter_id, ts, kind, score, features) "
            "values ('a1', 'gw0', 'm0', '2026-03-01T12:00Z', 'anomaly', 0.9, '{\"x\": 1.5}');"
            "insert into raw.quarantine (raw, reason, received_at, source) "
            "values (E'{bad\\njson', 'malformed_json', now(), 'test');"
            "insert into raw.gateway_status (gateway_id, sent_at, state, status) "
            "values ('gw0', now(), 'online', '{\"buffer\": {\"pending_readings\": 3}}')"
        )
    first = {r.table: r.rows for r in load(settings)}
    assert first == {
        "grid_assets": 1,
        "meters": 1,
        "readings": 960,
        "alerts": 1,
        "quarantine": 1,
        "gateway_status": 1,
    }
    assert_same_readings(pg_dsn, owner)
    client = connect(owner)
    try:
        assert client.query("select raw from raw.quarantine").result_rows == [("{bad\njson",)]
        features = client.query("select JSONExtractFloat(features, 'x') from raw.alerts")
        assert features.result_rows == [(1.5,)]
        mark = read_watermark(client, "readings")
    finally:
        client.close()
    insert_readings(pg_dsn, meters=5, intervals=48, first_meter=100)
    second = {r.table: r.rows for r in load(settings)}
    assert second["readings"] == 240, "only the new rows are read again"
    assert second["alerts"] == 0
    assert_same_readings(pg_dsn, owner)
    client = connect(owner)
    try:
        assert read_watermark(client, "readings") > mark
    finally:
        client.close()


def test_rows_of_open_transactions_are_not_skipped(pg_dsn: str, owner: str) -> None:
    """A transaction that started before the load and commits after it is not missed."""
    settings = get_settings(clickhouse_dsn=owner, pg_dsn=pg_dsn, load_overlap_s=0)
    insert_readings(pg_dsn, meters=3, intervals=4)
    slow = psycopg.connect(pg_dsn)
    try:
        slow.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id) "
            "values ('late', '2026-03-01T00:30Z', 1800, 42, 'gw', 'b')"
        )
        time.sleep(0.05)
        insert_readings(pg_dsn, meters=1, intervals=2, first_meter=50)  # committed after it
        loaded = {r.table: r for r in load(settings)}
        assert loaded["readings"].rows == 12, "nothing at or after the open transaction's start"
        slow.commit()
    finally:
        slow.close()
    load(settings)
    assert_same_readings(pg_dsn, owner)
    assert ch_totals(owner)[0] == 15


def test_load_killed_midway_then_rerun_neither_misses_nor_doubles(pg_dsn: str, owner: str) -> None:
    insert_readings(pg_dsn, meters=200, intervals=1000)  # 200,000 readings
    env = {
        **os.environ,
        "EIOT_CLICKHOUSE_DSN": owner,
        "EIOT_PG_DSN": pg_dsn,
        "EIOT_LOAD_CHUNK_ROWS": "5000",
    }
    cmd = [sys.executable, "-m", "central.warehouse", "warehouse", "load"]
    loader = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = connect(owner)
    try:
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and loader.poll() is None:
            if client.command("exists table raw.readings"):
                rows = int(client.command("select count() from raw.readings"))
                if rows >= 20_000:
                    break
            time.sleep(0.02)
        assert loader.poll() is None, "the loader finished before it could be killed"
        os.kill(loader.pid, signal.SIGKILL)
        loader.wait()
        partial = int(client.command("select count() from raw.readings final"))
        assert 0 < partial < 200_000, "killed mid-load"
        assert read_watermark(client, "readings") == datetime(1970, 1, 1, tzinfo=UTC)
    finally:
        client.close()

    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_same_readings(pg_dsn, owner)
    client = connect(owner)
    try:
        # Rows written twice (before the kill and again) collapse once merged: no doubles.
        client.command("optimize table raw.readings final")
        assert client.command("select count() from raw.readings") == 200_000
        mark = read_watermark(client, "readings")
        assert datetime.now(UTC) - mark < timedelta(minutes=5)
    finally:
        client.close()
