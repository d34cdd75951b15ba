"""raw.readings is partitioned by month; the retention job drops an old month only once the
warehouse holds every reading of it, never the DEFAULT partition nor a recent month, nothing on
a dry run, nothing without a warehouse. Against the real PostgreSQL and the embedded
ClickHouse the project ships."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from central.db import migrate
from central.retention import Partition, clickhouse_warehouse, decide, partitions, run
from central.warehouse.client import spawn_owner, stop_owner
from central.warehouse.loader import load
from central.warehouse.settings import get_settings
from simulator.raw_db import scratch_database
from tests.test_warehouse_loader import insert_readings

pytestmark = pytest.mark.services

NOW = datetime(2026, 12, 10, tzinfo=UTC)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with scratch_database("retention_test") as dsn:
        yield dsn


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[str]:
    proc, url = spawn_owner(tmp_path / "warehouse")
    try:
        yield url
    finally:
        stop_owner(proc)


def names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [p.name for p in partitions(conn)]


def test_partitions_take_every_ts_and_dedup_still_holds(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id) values"
            " ('m', now(), 1800, 1, 'g', 'b'), ('m', '2031-01-01T00:30Z', 1800, 1,"
            " 'g', 'b') on conflict (meter_id, ts) do nothing"
        )
        again = conn.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id) values"
            " ('m', (select ts from raw.readings where ts < '2030-01-01'), 1800, 2, 'g', 'b2')"
            " on conflict (meter_id, ts) do nothing"
        ).rowcount
        assert again == 0  # the key is unique across the partitioned table
        far = conn.execute("select count(*) from raw.readings_default").fetchone()
        assert far == (1,)  # 2031: no partition yet, kept in DEFAULT
        conn.execute("select raw.ensure_reading_partitions('2031-01-01', '2031-02-01')")
        assert conn.execute("select count(*) from raw.readings_default").fetchone() == (0,)
        assert conn.execute("select count(*) from raw.readings_y2031m01").fetchone() == (1,)
    migrate(pg_dsn)  # every file once more (this database had no ledger): no error, no loss
    assert migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("select count(*) from raw.readings").fetchone() == (2,)


def test_a_month_goes_only_once_the_warehouse_holds_it(pg_dsn: str, owner: str) -> None:
    insert_readings(pg_dsn, meters=20, intervals=48 * 40)  # March and most of April 2026
    lines: list[str] = []
    warehouse = clickhouse_warehouse(owner)
    # older than the partitions the migration made: in DEFAULT, until the job makes their months
    # not loaded yet: kept, and said why
    run(pg_dsn, keep_days=92, warehouse=warehouse, now=NOW, say=lines.append)
    assert {"readings_y2026m03", "readings_y2026m04"} <= set(names(pg_dsn))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("select count(*) from raw.readings_default").fetchone() == (0,)
    assert any(line.startswith("keep") and "y2026m03" in line for line in lines)

    settings = get_settings(clickhouse_dsn=owner, pg_dsn=pg_dsn, load_overlap_s=0)
    load(settings, ["readings"])

    lines.clear()
    run(pg_dsn, keep_days=92, warehouse=warehouse, now=NOW, dry_run=True, say=lines.append)
    assert "readings_y2026m03" in names(pg_dsn)  # a dry run drops nothing
    assert any(line.startswith("would drop") and "y2026m03" in line for line in lines)

    run(pg_dsn, keep_days=92, warehouse=None, now=NOW, say=lines.append)
    assert "readings_y2026m03" in names(pg_dsn)  # no warehouse: nothing goes

    # a late reading of March arrives after the load: March waits for the next load
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id)"
            " values ('late', '2026-03-20T10:00Z', 1800, 1, 'g', 'late')"
        )
        april = conn.execute("select count(*) from raw.readings_y2026m04").fetchone()
    lines.clear()
    run(pg_dsn, keep_days=92, warehouse=warehouse, now=NOW, say=lines.append)
    assert "readings_y2026m03" in names(pg_dsn) and "readings_y2026m04" not in names(pg_dsn)
    assert any("y2026m03" in line and "loaded up to" in line for line in lines)
    load(settings, ["readings"])
    run(pg_dsn, keep_days=92, warehouse=warehouse, now=NOW, say=lines.append)
    left = names(pg_dsn)
    assert "readings_y2026m03" not in left and "readings_y2026m04" not in left
    assert any(n >= "readings_y2026m12" for n in left)  # the current and next months stay
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("select to_regclass('raw.readings_default')").fetchone() != (None,)
    assert april is not None and april[0] > 0


def test_a_warehouse_short_of_rows_keeps_the_month_whatever_its_watermark_says() -> None:
    """A watermark moved by hand, or a warehouse restored from an older backup."""
    march = Partition(
        "readings_y2026m03",
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
        rows=100,
        newest_received=datetime(2026, 4, 2, tzinfo=UTC),
    )
    ahead = datetime(2026, 12, 1, tzinfo=UTC)
    short = decide([march], NOW, 92, (lambda: ahead, lambda lo, hi: 99))
    assert not short[0].drop and "holds 99 of its 100" in short[0].reason
    full = decide([march], NOW, 92, (lambda: ahead, lambda lo, hi: 100))
    assert full[0].drop
