"""ClickHouse raw tables: the landing copies of Postgres ``raw.*``.

``ReplacingMergeTree`` ordered by each table's natural key, so that a row loaded twice (a rerun
after a crash, an overlapping window) collapses into one; readers that need exact counts before
the background merges happen use ``FINAL`` (the dbt staging models do). Tables that grow with
time are partitioned by month. ``loaded_at`` (when the loader wrote the row) is the version
column and what dbt's incremental models pick new rows up by.
"""

from __future__ import annotations

from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from edge_agent.fields import READING_FIELDS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS = "DateTime64(3, 'UTC')"
# A reading's own columns come from its one definition (edge_agent.fields).
READING_COLUMNS_DDL = ",\n            ".join(f"{f.name} {f.clickhouse}" for f in READING_FIELDS)

TABLES: dict[str, str] = {
    "readings": f"""
        create table if not exists {{db}}.readings (
            {READING_COLUMNS_DDL},
            gateway_id LowCardinality(String),
            batch_id String,
            received_at {TS},
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        partition by toYYYYMM(ts)
        order by (meter_id, ts)
    """,
    "alerts": f"""
        create table if not exists {{db}}.alerts (
            alert_id String,
            gateway_id LowCardinality(String),
            meter_id String,
            ts {TS},
            kind LowCardinality(String),
            score Nullable(Float64),
            threshold Nullable(Float64),
            model_version LowCardinality(Nullable(String)),
            features String,
            detail Nullable(String),
            received_at {TS},
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        partition by toYYYYMM(ts)
        order by (meter_id, ts, alert_id)
    """,
    "quarantine": f"""
        create table if not exists {{db}}.quarantine (
            quarantine_id Int64,
            raw String,
            reason LowCardinality(String),
            received_at {TS},
            stored_at {TS},
            source String,
            gateway_id Nullable(String),
            batch_id Nullable(String),
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        partition by toYYYYMM(stored_at)
        order by quarantine_id
    """,
    "gateway_status": f"""
        create table if not exists {{db}}.gateway_status (
            gateway_id String,
            sent_at {TS},
            received_at {TS},
            state LowCardinality(String),
            status String,
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        partition by toYYYYMM(sent_at)
        order by (gateway_id, sent_at)
    """,
    "grid_assets": f"""
        create table if not exists {{db}}.grid_assets (
            asset_id String,
            asset_type LowCardinality(String),
            parent_id Nullable(String),
            name Nullable(String),
            rated_kva Nullable(Float64),
            latitude Nullable(Float64),
            longitude Nullable(Float64),
            updated_at {TS},
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        order by asset_id
    """,
    "meters": f"""
        create table if not exists {{db}}.meters (
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
            installed_at Nullable({TS}),
            updated_at {TS},
            loaded_at {TS}
        )
        engine = ReplacingMergeTree(loaded_at)
        order by meter_id
    """,
    # The loader's durable watermark, beside the data it describes: if the warehouse is wiped,
    # the watermark goes with it and the next load starts over instead of skipping history.
    "load_watermarks": """
        create table if not exists {db}.load_watermarks (
            table_name String,
            watermark DateTime64(6, 'UTC'),
            rows_loaded UInt64,
            updated_at DateTime64(6, 'UTC')
        )
        engine = ReplacingMergeTree(updated_at)
        order by table_name
    """,
}


# Columns added after a table's first release: ``(table, column, type, after)``. A warehouse
# made before them gets them on its next load; a new one gets them the same way, so both end
# with one column order.
ADDED_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("meters", "load_shape", "LowCardinality(Nullable(String))", "customer_class"),
    ("meters", "timezone", "Nullable(String)", "region"),
)


def ensure_schema(client: Client, database: str = "raw") -> None:
    client.command(f"create database if not exists {database}")
    for ddl in TABLES.values():
        client.command(ddl.format(db=database))
    present = {
        (str(table), str(column))
        for table, column in client.query(
            "select table, name from system.columns where database = {d:String}",
            parameters={"d": database},
        ).result_rows
    }
    for table, column, ctype, after in ADDED_COLUMNS:
        if (table, column) in present:
            continue
        client.command(
            f"alter table {database}.{table} add column if not exists {column} {ctype} "
            f"after {after}"
        )
        # The rows loaded before have the column empty, and the loader reads by arrival time:
        # the table is read again from the start (ReplacingMergeTree keeps the newer copy).
        write_watermark(client, table, EPOCH, 0, database)


def read_watermark(client: Client, table: str, database: str = "raw") -> datetime:
    rows = client.query(
        f"select watermark from {database}.load_watermarks final where table_name = {{t:String}}",
        parameters={"t": table},
    ).result_rows
    if not rows:
        return EPOCH
    value: datetime = rows[0][0]
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def write_watermark(
    client: Client, table: str, watermark: datetime, rows: int, database: str = "raw"
) -> None:
    client.insert(
        f"{database}.load_watermarks",
        [[table, watermark, rows, datetime.now(UTC)]],
        column_names=["table_name", "watermark", "rows_loaded", "updated_at"],
    )
