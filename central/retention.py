"""``central retention run``: make the months of raw.readings ahead, drop the old ones the
warehouse holds.

PostgreSQL is the landing zone, the warehouse (ClickHouse) the history. A monthly partition of
``raw.readings`` (``central/sql/0013_readings_partitioned.sql``) is dropped only when

* its whole month ended more than ``keep_days`` ago,
* the warehouse's load watermark for ``readings`` is past the newest ``received_at`` in it (the
  loader has read every row of it: ``central.warehouse.loader``), and
* the warehouse holds at least as many distinct readings of that month as the partition (a
  second, independent check: a watermark moved by hand, or a warehouse restored from an older
  backup, stops the drop).

Without a reachable warehouse nothing is dropped. The DEFAULT partition is never dropped.
Every decision is printed with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

MONTHS_AHEAD = 3


@dataclass(frozen=True)
class Partition:
    name: str  # raw.<name>
    lo: datetime
    hi: datetime
    rows: int
    newest_received: datetime | None


@dataclass(frozen=True)
class Decision:
    partition: Partition
    drop: bool
    reason: str


#: The warehouse, as retention needs it: (load watermark of readings, distinct readings with
#: lo <= ts < hi). Raises when the warehouse cannot answer.
Warehouse = tuple[Callable[[], datetime], Callable[[datetime, datetime], int]]


def partitions(conn: psycopg.Connection) -> list[Partition]:
    """The monthly partitions of raw.readings, oldest first (not the DEFAULT one)."""
    rows = conn.execute(
        "select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i "
        "join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'raw.readings'::regclass and not c.relname = 'readings_default' "
        "order by c.relname"
    ).fetchall()
    out = []
    for name, bound in rows:
        # FOR VALUES FROM ('2026-03-01 00:00:00+00') TO ('2026-04-01 00:00:00+00')
        lo_text, hi_text = (part.split("'")[1] for part in bound.split(" TO "))
        count, newest = conn.execute(
            sql.SQL("select count(*), max(received_at) from raw.{}").format(sql.Identifier(name))
        ).fetchone()  # type: ignore[misc]
        out.append(
            Partition(
                name,
                datetime.fromisoformat(lo_text).astimezone(UTC),
                datetime.fromisoformat(hi_text).astimezone(UTC),
                int(count),
                newest,
            )
        )
    return out


def decide(
    parts: list[Partition], now: datetime, keep_days: int, warehouse: Warehouse | None
) -> list[Decision]:
    cutoff = now - timedelta(days=keep_days)
    out = []
    watermark: datetime | None = None
    for p in parts:
        if p.hi > cutoff:
            out.append(Decision(p, False, f"kept: ends {p.hi:%Y-%m-%d}, within {keep_days} days"))
            continue
        if p.rows == 0:
            out.append(Decision(p, True, "empty, past the retention period"))
            continue
        if warehouse is None:
            out.append(Decision(p, False, "kept: the warehouse cannot be reached"))
            continue
        read_watermark, count = warehouse
        try:
            watermark = watermark or read_watermark()
            held = count(p.lo, p.hi)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the data
            out.append(Decision(p, False, f"kept: the warehouse did not answer ({exc})"[:200]))
            continue
        if p.newest_received is not None and watermark <= p.newest_received:
            out.append(
                Decision(
                    p,
                    False,
                    f"kept: the warehouse loaded up to {watermark:%Y-%m-%d %H:%M:%S}, the "
                    f"partition received rows until {p.newest_received:%Y-%m-%d %H:%M:%S}",
                )
            )
        elif held < p.rows:
            out.append(
                Decision(p, False, f"kept: the warehouse holds {held} of its {p.rows} readings")
            )
        else:
            out.append(Decision(p, True, f"the warehouse holds all {p.rows} readings"))
    return out


def run(
    dsn: str,
    *,
    keep_days: int,
    warehouse: Warehouse | None,
    dry_run: bool = False,
    now: datetime | None = None,
    say: Callable[[str], None] = print,
) -> list[Decision]:
    """Make the months ahead, then drop what :func:`decide` allows (nothing with ``dry_run``)."""
    now = now or datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not dry_run:
            # the months ahead, and the months of rows that arrived in the DEFAULT partition
            # (a backlog older than the partitions: central refuses readings before 2010, so
            # this is bounded)
            made = conn.execute(
                "select raw.ensure_reading_partitions(%s, %s) + coalesce(sum("
                "raw.ensure_reading_partitions(m, m + interval '1 month')), 0) from ("
                "select distinct date_trunc('month', ts, 'UTC') as m from raw.readings_default"
                ") months",
                (now, now + timedelta(days=31 * MONTHS_AHEAD)),
            ).fetchone()
            say(f"partitions made: {made[0] if made else 0}")
        decisions = decide(partitions(conn), now, keep_days, warehouse)
        for d in decisions:
            verb = ("would drop" if dry_run else "drop") if d.drop else "keep"
            say(f"{verb:<10} raw.{d.partition.name} ({d.partition.rows} rows): {d.reason}")
            if d.drop and not dry_run:
                conn.execute(sql.SQL("drop table raw.{}").format(sql.Identifier(d.partition.name)))
    return decisions


def clickhouse_warehouse(clickhouse_dsn: str, database: str = "raw") -> Warehouse:
    """The warehouse checks over ``central.warehouse`` (its client and the loader's watermark)."""
    from central.warehouse.client import connect
    from central.warehouse.schema import read_watermark

    def watermark() -> datetime:
        client = connect(clickhouse_dsn)
        try:
            return read_watermark(client, "readings", database).astimezone(UTC)
        finally:
            client.close()

    def count(lo: datetime, hi: datetime) -> int:
        client = connect(clickhouse_dsn)
        try:
            result = client.query(
                f"select uniqExact(meter_id, ts) from {database}.readings final "
                "where ts >= {lo:DateTime64(3, 'UTC')} and ts < {hi:DateTime64(3, 'UTC')}",
                parameters={"lo": lo, "hi": hi},
            )
            return int(result.result_rows[0][0])
        finally:
            client.close()

    return watermark, count
