"""Simulated fleets into PostgreSQL ``raw``, and throwaway databases to put them in.

For the warehouse tests and ``bench.warehouse``: ``scratch_database`` makes a new database with
the raw schema (``central/sql``) and drops it afterwards; ``write_warehouse_fleet`` copies a
:class:`~simulator.warehouse_fleet.WarehouseFleet` into it, ``write_simulated_fleet`` the
realistic ``simulator.Fleet`` (and returns its ground truth per transformer and day).

The scratch helper lives here, not in ``tests/support``, because the benchmark needs it too and
``bench`` must not import the test package.

Needs psycopg (the ``central`` extra) and pyarrow (the ``warehouse`` extra). Not imported by
``simulator/__init__.py`` (the simulator itself needs numpy alone, and the gateway imports it):
import it explicitly.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from central.db import migration_files

from .fleet import Fleet
from .labels import FLAG_NAMES
from .registry_db import upsert_registry
from .warehouse_fleet import WarehouseFleet

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _copy_arrow(pg: psycopg.Connection, table_name: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    cols = ", ".join(table.column_names)
    with pg.cursor() as cur, cur.copy(f"copy {table_name} ({cols}) from stdin (format csv)") as cp:
        cp.write(buf.getvalue())


def write_warehouse_fleet(pg: psycopg.Connection, fleet: WarehouseFleet) -> int:
    """Registry, readings, alerts and gateway status of ``fleet`` into Postgres ``raw``."""
    with pg.transaction():
        _copy_arrow(pg, "raw.grid_assets", fleet.grid_assets())
        _copy_arrow(pg, "raw.meters", fleet.meter_rows())
    rows = 0
    for block in fleet.readings():
        with pg.transaction():
            _copy_arrow(pg, "raw.readings", block)
        rows += block.num_rows
    with pg.transaction():
        alerts = fleet.alerts()
        if alerts.num_rows:
            _copy_arrow(pg, "raw.alerts", alerts)
        _copy_arrow(pg, "raw.gateway_status", fleet.gateway_status())
        pg.execute(
            "insert into raw.quarantine (raw, reason, received_at, source) "
            "values ('{\"kwh\": -1}', 'validation: kwh must be >= 0', now(), 'bench')"
        )
        for gateway, reason, count in fleet.quarantine():
            pg.execute(
                "insert into raw.quarantine (raw, reason, received_at, source, gateway_id) "
                "select '{}', %s, now(), 'simulator', %s from generate_series(1, %s)",
                (reason, gateway, count),
            )
    return rows


def migrate(dsn: str) -> None:
    """Run every ``central/sql`` file, in name order, on a new database (no ledger: it is
    thrown away)."""
    with psycopg.connect(dsn, autocommit=True) as pg:
        for _, text in migration_files():
            pg.execute(text)


@contextlib.contextmanager
def scratch_database(
    prefix: str = "wh_bench", keep: bool = False, schema: bool = True
) -> Iterator[str]:
    """A new Postgres database with the raw schema (``schema``; else empty), dropped afterwards;
    yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        if schema:
            migrate(dsn)
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f"drop database if exists {name} with (force)")


def write_simulated_fleet(dsn: str, fleet: Fleet) -> dict[tuple[str, int], tuple[float, float]]:
    """Registry and readings of a ``simulator.Fleet`` into Postgres ``raw``.

    Returns the ground truth per (transformer, UTC day number): energy stolen through a
    bypass (true minus metered kWh of the readings labelled ``bypass``) and energy supplied (the
    transformer meter's kWh).
    """
    registry = fleet.registry()
    upsert_registry(registry, dsn)
    meters = {m["meter_id"]: m for m in registry.meters}
    stolen: dict[tuple[str, int], float] = {}
    supplied: dict[tuple[str, int], float] = {}
    with psycopg.connect(dsn, autocommit=True) as pg:
        for chunk in fleet.chunks(chunk_intervals=96):
            n = len(chunk)
            bits, where = np.unique(chunk.flags.astype(np.int64), return_inverse=True)
            literal = np.array(
                [
                    "{"
                    + ",".join(name for b, name in enumerate(FLAG_NAMES) if int(f) >> b & 1)
                    + "}"
                    for f in bits
                ]
            )
            ids, inverse = np.unique(chunk.meter_id.astype(str), return_inverse=True)
            info = [meters.get(m, {}) for m in ids]
            gateway = np.array([m.get("gateway_id") or "gw" for m in info])[inverse]
            table = pa.table(
                {
                    "meter_id": ids[inverse],
                    "ts": pa.array(chunk.ts * 1000, pa.int64()).cast(pa.timestamp("ms", "UTC")),
                    "interval_s": np.full(n, chunk.interval_s, np.int32),
                    "kwh": chunk.kwh,
                    "register_kwh": chunk.register_kwh,
                    "voltage_v": pa.array(chunk.voltage_v, from_pandas=True),
                    "temperature_c": pa.array(chunk.temperature_c, from_pandas=True),
                    "humidity_pct": pa.array(chunk.humidity_pct, from_pandas=True),
                    "wind_ms": pa.array(chunk.wind_ms, from_pandas=True),
                    "supply": np.where(chunk.supply_on, "on", "off"),
                    "flags": literal[where],
                    "gateway_id": gateway,
                    "batch_id": np.full(n, "sim"),
                }
            )
            _copy_arrow(pg, "raw.readings", table)
            # Ground truth per (transformer, day), summed with numpy.
            tx = np.array([m.get("transformer_id") or "" for m in info])[inverse]
            supply_row = np.array([m.get("meter_role") == "transformer" for m in info])[inverse]
            day = (chunk.ts - 1) // 86400
            theft = np.where(chunk.label.astype(str) == "bypass", chunk.true_kwh - chunk.kwh, 0.0)
            keys, group = np.unique(
                np.char.add(np.char.add(tx, "|"), day.astype(str)), return_inverse=True
            )
            theft_sum = np.bincount(group, weights=theft, minlength=len(keys))
            supply_sum = np.bincount(
                group, weights=np.where(supply_row, chunk.kwh, 0.0), minlength=len(keys)
            )
            for key, t, sup in zip(
                keys.tolist(), theft_sum.tolist(), supply_sum.tolist(), strict=True
            ):
                name, _, number = key.partition("|")
                k = (name, int(number))
                stolen[k] = stolen.get(k, 0.0) + t
                supplied[k] = supplied.get(k, 0.0) + sup
    return {key: (stolen[key], value) for key, value in supplied.items() if key[0] and value > 0}
