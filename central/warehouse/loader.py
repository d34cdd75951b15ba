"""Incremental loads from Postgres ``raw.*`` into the ClickHouse raw tables.

Each table is read by its arrival column (``received_at``, ``stored_at`` or ``updated_at``, all
filled by Postgres' ``now()``) in the window ``[watermark - overlap, upper)``:

* ``upper`` is taken *before* the read: the earlier of the clock and the start of the oldest
  transaction still open in the database. ``now()`` is a transaction's start time, so every row
  stamped before ``upper`` belongs to a transaction that had committed (or aborted) by then and
  is visible to the read that follows; a slow transaction cannot slip a row behind the
  watermark.
* The rows stream out of Postgres with one ``COPY ... TO STDOUT`` (CSV), are parsed by Arrow's
  multi-threaded CSV reader into columnar batches and inserted in large Arrow blocks: never row
  by row.
* The watermark (in ClickHouse, beside the data) moves to ``upper`` only after every block of
  the window is in. A load killed half-way leaves the old watermark; the rerun reads the same
  window again and ``ReplacingMergeTree`` collapses the rows written twice. Nothing is missed,
  and with ``FINAL`` (as the dbt staging models read) nothing is doubled.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from central.warehouse.client import connect
from central.warehouse.schema import EPOCH, ensure_schema, read_watermark, write_watermark
from central.warehouse.settings import WarehouseSettings
from edge_agent.fields import READING_FIELDS

log = logging.getLogger(__name__)

MS = pa.timestamp("ms", tz="UTC")
F64, STR, I64, I32 = pa.float64(), pa.string(), pa.int64(), pa.int32()


def _ms(column: str) -> str:
    """A timestamptz as integer epoch milliseconds (fast to print, parse and convert)."""
    return f"round(date_part('epoch', {column}) * 1000)::int8 as {column}"


@dataclass(frozen=True)
class TableSpec:
    """How one Postgres raw table is copied: its select list and the Arrow type of each column."""

    name: str
    cursor: str
    columns: dict[str, pa.DataType]
    select: dict[str, str] = field(default_factory=dict)  # column → Postgres expression
    timestamps: tuple[str, ...] = ()
    list_columns: tuple[str, ...] = ()
    multiline: bool = False

    def copy_sql(self) -> str:
        exprs = []
        for col in self.columns:
            if col in self.select:
                exprs.append(f"{self.select[col]} as {col}")
            elif col in self.timestamps:
                exprs.append(_ms(col))
            else:
                exprs.append(col)
        return (
            f"copy (select {', '.join(exprs)} from raw.{self.name} "
            f"where {self.cursor} >= %s and {self.cursor} < %s) to stdout (format csv)"
        )


# PostgreSQL type of a reading's field → the Arrow type its CSV text is parsed into.
_ARROW_OF_PG = {
    "text": STR,
    "timestamp with time zone": I64,  # epoch milliseconds (see _ms)
    "integer": I32,
    "double precision": F64,
    "text[]": STR,  # comma-joined in the copy, split into a list afterwards
}


def _readings_spec() -> TableSpec:
    """raw.readings: a reading's fields (edge_agent.fields), then what the ingest adds."""
    columns = {f.name: _ARROW_OF_PG[f.postgres.type] for f in READING_FIELDS}
    columns.update({"gateway_id": STR, "batch_id": STR, "received_at": I64})
    pg_types = {f.name: f.postgres.type for f in READING_FIELDS}
    lists = tuple(n for n, t in pg_types.items() if t == "text[]")
    stamps = tuple(n for n, t in pg_types.items() if t == "timestamp with time zone")
    return TableSpec(
        "readings",
        "received_at",
        columns,
        select={n: f"array_to_string({n}, ',')" for n in lists},
        timestamps=(*stamps, "received_at"),
        list_columns=lists,
    )


TABLE_SPECS: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "grid_assets",
            "updated_at",
            {
                "asset_id": STR,
                "asset_type": STR,
                "parent_id": STR,
                "name": STR,
                "rated_kva": F64,
                "latitude": F64,
                "longitude": F64,
                "updated_at": I64,
            },
            timestamps=("updated_at",),
        ),
        TableSpec(
            "meters",
            "updated_at",
            {
                "meter_id": STR,
                "meter_role": STR,
                "customer_class": STR,
                "load_shape": STR,
                "tariff": STR,
                "transformer_id": STR,
                "feeder_id": STR,
                "region": STR,
                "timezone": STR,
                "latitude": F64,
                "longitude": F64,
                "gateway_id": STR,
                "installed_at": I64,
                "updated_at": I64,
            },
            timestamps=("installed_at", "updated_at"),
        ),
        _readings_spec(),
        TableSpec(
            "alerts",
            "received_at",
            {
                "alert_id": STR,
                "gateway_id": STR,
                "meter_id": STR,
                "ts": I64,
                "kind": STR,
                "score": F64,
                "threshold": F64,
                "model_version": STR,
                "features": STR,
                "detail": STR,
                "received_at": I64,
            },
            select={"features": "coalesce(features::text, '{}')"},
            timestamps=("ts", "received_at"),
            multiline=True,
        ),
        TableSpec(
            "quarantine",
            "stored_at",
            {
                "quarantine_id": I64,
                "raw": STR,
                "reason": STR,
                "received_at": I64,
                "stored_at": I64,
                "source": STR,
                "gateway_id": STR,
                "batch_id": STR,
            },
            timestamps=("received_at", "stored_at"),
            multiline=True,
        ),
        TableSpec(
            "gateway_status",
            "received_at",
            {"gateway_id": STR, "sent_at": I64, "received_at": I64, "state": STR, "status": STR},
            select={"status": "status::text"},
            timestamps=("sent_at", "received_at"),
            multiline=True,
        ),
    )
}


@dataclass
class TableLoad:
    table: str
    rows: int = 0
    seconds: float = 0.0
    lower: datetime = EPOCH
    upper: datetime = EPOCH

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[str, int], None]


class _CopyStream(io.RawIOBase):
    """A file object over a psycopg COPY, for Arrow's streaming CSV reader."""

    def __init__(self, chunks: Iterator[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _split_lists(column: pa.ChunkedArray) -> pa.Array:
    """'a,b' → ['a', 'b'] and '' or null → [], splitting only the rows that hold something."""
    text = pc.fill_null(column, "").combine_chunks()
    nonempty = np.asarray(pc.not_equal(text, ""), dtype=bool)
    lengths = np.zeros(len(text), dtype=np.int32)
    values: pa.Array = pa.array([], STR)
    rows = np.flatnonzero(nonempty)
    if len(rows):
        parts = pc.split_pattern(text.take(pa.array(rows)), ",")
        lengths[rows] = np.asarray(pc.list_value_length(parts), dtype=np.int32)
        values = parts.flatten()
    offsets = np.zeros(len(text) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _to_clickhouse(spec: TableSpec, table: pa.Table, loaded_at_ms: int) -> pa.Table:
    """Arrow CSV batch → the raw table's Arrow shape (timestamps, lists, load stamp)."""
    for name in spec.timestamps:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(name).cast(MS))
    for name in spec.list_columns:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, _split_lists(table.column(name)))
    loaded = pa.array(np.full(table.num_rows, loaded_at_ms, dtype="int64")).cast(MS)
    return table.append_column("loaded_at", loaded)


def _parquet(table: pa.Table) -> bytes:
    """A columnar block for ClickHouse: uncompressed Parquet (row groups parse in parallel)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", row_group_size=131_072, use_dictionary=False)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def upper_bound(pg: psycopg.Connection) -> datetime:
    """The arrival time below which every row is committed: see the module docstring."""
    row = pg.execute(
        """
        select least(
            clock_timestamp(),
            (select min(xact_start) from pg_stat_activity
             where pid <> pg_backend_pid() and backend_type = 'client backend'
               and datname = current_database() and xact_start is not null)
        )
        """
    ).fetchone()
    assert row is not None
    bound: datetime = row[0]
    lag = datetime.now(UTC) - bound
    if lag > timedelta(minutes=10):
        log.warning("a transaction open for %s holds the load window back", lag)
    return bound


def _blocks(
    pg: psycopg.Connection, spec: TableSpec, lower: datetime, upper: datetime, rows: int
) -> Iterator[pa.Table]:
    """The rows of one window as Arrow tables of about ``rows`` rows, streamed from one COPY."""
    read_options = pacsv.ReadOptions(
        column_names=list(spec.columns), block_size=8 << 20, use_threads=True
    )
    parse_options = pacsv.ParseOptions(newlines_in_values=spec.multiline)
    convert_options = pacsv.ConvertOptions(
        column_types=spec.columns,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with pg.cursor() as cur, cur.copy(spec.copy_sql(), (lower, upper)) as copy:
        stream = io.BufferedReader(_CopyStream(iter(copy)), buffer_size=1 << 20)
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" not in str(exc):
                raise
            return
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in reader:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= rows:
                table = pa.Table.from_batches(pending)
                start = 0
                while table.num_rows - start >= rows:
                    yield table.slice(start, rows)
                    start += rows
                rest = table.slice(start)
                pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows:
            yield pa.Table.from_batches(pending)


def load_table(
    pg: psycopg.Connection,
    client: Client,
    spec: TableSpec,
    settings: WarehouseSettings,
    progress: Progress | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> TableLoad:
    """Load one table's new rows; or, with ``window``, the rows that arrived in that window
    again (a backfill: the watermark is neither read nor moved, ReplacingMergeTree collapses
    the rows loaded twice)."""
    db = settings.raw_database
    started = time.perf_counter()
    upper = upper_bound(pg)
    if window is None:
        watermark = read_watermark(client, spec.name, db)
        lower = watermark - timedelta(seconds=settings.load_overlap_s if watermark > EPOCH else 0)
    else:
        lower, upper = window[0], min(window[1], upper)
    result = TableLoad(spec.name, lower=lower, upper=upper)
    target = f"{db}.{spec.name}"

    def insert(block: pa.Table) -> None:
        table = _to_clickhouse(spec, block, int(time.time() * 1000))
        client.raw_insert(target, table.column_names, _parquet(table), fmt="Parquet")
        result.rows += block.num_rows
        if progress is not None:
            progress(spec.name, block.num_rows)

    # Reading (Postgres + CSV parsing) and writing (Parquet + ClickHouse) overlap: one block is
    # written while the next one is read.
    with ThreadPoolExecutor(1, thread_name_prefix="ch-insert") as writer:
        pending: Future[None] | None = None
        for block in _blocks(pg, spec, lower, upper, settings.load_chunk_rows):
            if pending is not None:
                pending.result()
            pending = writer.submit(insert, block)
        if pending is not None:
            pending.result()
    if window is None:
        write_watermark(client, spec.name, upper, result.rows, db)
    result.seconds = time.perf_counter() - started
    return result


def load(
    settings: WarehouseSettings,
    tables: list[str] | None = None,
    progress: Progress | None = None,
    client: Client | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> list[TableLoad]:
    """Load every table (registry first), each in its own window; return what was loaded.
    ``window`` reloads what arrived in it instead (see :func:`load_table`)."""
    if window is not None and window[0] >= window[1]:
        raise ValueError(f"empty reload window {window[0]} .. {window[1]}")
    names = tables or list(TABLE_SPECS)
    unknown = sorted(set(names) - set(TABLE_SPECS))
    if unknown:
        raise ValueError(f"unknown tables: {', '.join(unknown)}")
    own_client = client is None
    ch = client or connect(settings.clickhouse_dsn)
    try:
        ensure_schema(ch, settings.raw_database)
        results = []
        with psycopg.connect(settings.pg_dsn, autocommit=True) as pg:
            pg.execute("set timezone = 'UTC'")
            for name in names:
                results.append(load_table(pg, ch, TABLE_SPECS[name], settings, progress, window))
        return results
    finally:
        if own_client:
            ch.close()
