"""Great Expectations on Postgres raw: a clean load passes, a corrupted one fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from central import roles
from central.warehouse.quality import run_quality, sqlalchemy_postgres
from central.warehouse.settings import get_settings
from simulator.raw_db import scratch_database, write_warehouse_fleet
from simulator.warehouse_fleet import WarehouseFleet

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.services  # real PostgreSQL
RAW = ["raw_readings", "raw_meters"]


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with scratch_database("wh_test") as dsn:
        with psycopg.connect(dsn, autocommit=True) as pg:
            fleet = WarehouseFleet(meters=20, days=2, seed=3, customers_per_transformer=10)
            write_warehouse_fleet(pg, fleet)
        yield dsn


def test_raw_checkpoint_fails_on_a_corrupted_load(pg_dsn: str, tmp_path: Path) -> None:
    settings = get_settings(pg_dsn=pg_dsn, clickhouse_dsn=f"chdb://{tmp_path}/unused")
    clean = run_quality(settings, suites=RAW, docs_dir=tmp_path / "docs")
    assert clean.success, clean.failures
    assert clean.docs_index is not None and clean.docs_index.exists()

    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        # What a buggy ingest path or a hand-made fix could write behind the validator's back.
        pg.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, voltage_v, gateway_id, "
            "batch_id) values ('BAD1', '2026-03-01T00:30Z', 1800, 99999, 230, 'gw', 'x'), "
            "('BAD2', '2026-03-01T00:30Z', 1800, 0.2, 910, 'gw', 'x'), "
            "('BAD3', now() + interval '1 day', 1800, 0.2, 230, 'gw', 'x')"
        )
        pg.execute(
            "insert into raw.quarantine (raw, reason, received_at, source) "
            "select 'garbage', 'malformed_json', now(), 'test' from generate_series(1, 400)"
        )
    corrupted = run_quality(settings, suites=RAW, docs_dir=tmp_path / "docs")
    assert not corrupted.success
    failing = {(f.expectation, f.column): f for f in corrupted.failures}
    kwh = failing[("expect_column_values_to_be_between", "kwh")]
    assert kwh.unexpected_count == 1 and kwh.rows[0]["meter_id"] == "BAD1"
    volts = failing[("expect_column_values_to_be_between", "voltage_v")]
    assert [r["meter_id"] for r in volts.rows] == ["BAD2"]
    reasons = " ".join(f.reason for f in corrupted.failures)
    assert "Quarantined input stays under 5%" in reasons
    assert "5 minutes after it was received" in reasons
    assert not any(f.suite == "raw_meters" for f in corrupted.failures)

    # The command says the same and exits non-zero.
    env = {**os.environ, "EIOT_PG_DSN": pg_dsn, "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "central.warehouse",
        "quality",
        "run",
        "--suite",
        "raw_readings",
        "--docs-dir",
        str(tmp_path / "cli-docs"),
    ]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "BAD1" in done.stderr and "BAD2" in done.stderr


def test_raw_checks_run_as_the_loader_login(pg_dsn: str, tmp_path: Path) -> None:
    """The quality step runs with the warehouse load's own login, whose DSN is key=value (as
    ``central db login`` prints it) and whose password has characters a URL or GX could
    misread."""
    name, password = "eiot_test_quality_loader", "p$a@ss {w}/o:rd%"
    roles.create_login(pg_dsn, name, roles.LOADER, password)
    try:
        dsn = roles.dsn_for(pg_dsn, name, password)
        url = make_url(sqlalchemy_postgres(dsn))
        assert (url.username, url.password) == (name, password)
        assert url.database and url.database.startswith("wh_test_")
        settings = get_settings(pg_dsn=dsn, clickhouse_dsn=f"chdb://{tmp_path}/unused")
        outcome = run_quality(settings, suites=RAW, docs_dir=tmp_path / "docs")
        assert outcome.success, outcome.failures
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as pg:
            pg.execute(f"drop role if exists {name}")
