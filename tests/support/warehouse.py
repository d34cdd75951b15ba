"""The simulated fleet the warehouse tests build marts from, and the build itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from central.warehouse.client import spawn_owner, stop_owner
from central.warehouse.dbt import run_dbt
from central.warehouse.loader import load
from central.warehouse.settings import WarehouseSettings, get_settings
from simulator.warehouse_fleet import WarehouseFleet

# ClickHouse raw.meters as the first release made it (before schema.ADDED_COLUMNS), frozen here
# so that the tests of the upgrade do not move with the schema.
FIRST_RELEASE_METERS = """
    create table if not exists {db}.meters (
        meter_id String,
        meter_role LowCardinality(String),
        customer_class LowCardinality(Nullable(String)),
        tariff LowCardinality(Nullable(String)),
        transformer_id Nullable(String),
        feeder_id Nullable(String),
        region LowCardinality(Nullable(String)),
        latitude Nullable(Float64),
        longitude Nullable(Float64),
        gateway_id Nullable(String),
        installed_at Nullable(DateTime64(3, 'UTC')),
        updated_at DateTime64(3, 'UTC'),
        loaded_at DateTime64(3, 'UTC')
    )
    engine = ReplacingMergeTree(loaded_at)
    order by meter_id
"""


def marts_fleet() -> WarehouseFleet:
    """120 customer meters under 6 transformers, two with meters bypassed half-way, 14 days."""
    return WarehouseFleet(
        meters=120,
        days=14,
        seed=7,
        customers_per_transformer=20,
        transformers_per_feeder=3,
        theft_transformer_share=0.34,
    )


@dataclass(frozen=True)
class BuiltWarehouse:
    url: str  # the owner server of the embedded warehouse
    settings: WarehouseSettings
    build_output: str
    dbt_env: dict[str, str]  # where dbt wrote its artifacts and logs


@contextmanager
def built_warehouse(pg_dsn: str, work: Path) -> Iterator[BuiltWarehouse]:
    """An embedded warehouse in ``work/warehouse`` loaded from ``pg_dsn`` and built by dbt
    (models, data tests, unit tests), served by its owner for the block."""
    proc, url = spawn_owner(work / "warehouse")
    try:
        settings = get_settings(clickhouse_dsn=url, pg_dsn=pg_dsn, dbt_target="embedded")
        load(settings)
        # dbt's artifacts and logs go to the test's directory, not the project's.
        env = {"DBT_TARGET_PATH": str(work / "target"), "DBT_LOG_PATH": str(work / "logs")}
        done = run_dbt(settings, ["build"], capture=True, extra_env=env)
        assert done.returncode == 0, done.stdout[-6000:]
        yield BuiltWarehouse(url, settings, done.stdout, env)
    finally:
        stop_owner(proc)
