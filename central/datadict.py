"""``python -m central.datadict``: the data dictionary, ``docs/data-dictionary.md``.

Generated from the stores themselves, never written by hand: the gateway buffer's migrations
applied to an in-memory SQLite file, the PostgreSQL migrations applied to a scratch database,
the ClickHouse raw schema created in an embedded engine, and the dbt models' YAML (whose columns
a test compares with the built models). Descriptions come from one place each: a reading's
fields from ``edge_agent.fields``, PostgreSQL tables and columns from their ``COMMENT``s
(``central/sql``), dbt models from their YAML, the gateway's bookkeeping columns from
:data:`BUFFER_NOTES` below. ``tests/test_datadict.py`` fails when the file is not current.

    python -m central.datadict            # rewrite docs/data-dictionary.md
    python -m central.datadict --check    # exit 1 when it is not current
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from edge_agent.fields import READING_FIELDS
from edge_agent.migrations import migrate as migrate_buffer
from edge_agent.vocabulary import QUARANTINE_REASONS

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "data-dictionary.md"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

_READING = {f.name: f.description for f in READING_FIELDS}
_BUFFER_READING = {f.buffer_column: f.description for f in READING_FIELDS}

#: The gateway buffer's tables and bookkeeping columns (a reading's fields are described by
#: ``edge_agent.fields``). A note naming a column that does not exist fails the test.
BUFFER_NOTES: dict[str, dict[str, str]] = {
    "readings": {
        "": "Readings accepted by the agent, kept until acknowledged and out of the history "
        "window.",
        "seq": "Order of acceptance (from a counter that never goes back); a batch is a seq range.",
        "accepted_at": "When the agent committed the reading (epoch seconds, gateway clock).",
        "accept_seq": "Which intake transaction stored it.",
        "batch_id": "The batch it was frozen into; null until batched.",
        "acked_at": "When central acknowledged its batch (epoch seconds); null until then.",
    },
    "quarantine": {
        "": "Input that could not become a reading, with the reason; travels to central in a "
        "batch.",
        "id": "Order of arrival.",
        "raw": "The input as received (bounded excerpt).",
        "reason": "Why it is not a reading: a kind (see Quarantine reasons below), then details.",
        "received_at": "When it arrived (epoch seconds).",
        "source": "Where it came from (spool file and line, MQTT topic, buffer).",
        "batch_id": "The batch carrying it; null until batched.",
    },
    "batches": {
        "": "Readings batches formed by the agent; the payload is frozen so a resend is "
        "byte-identical.",
        "batch_id": "`<incarnation>-<seq>`: unique per buffer file.",
        "seq": "Batch sequence number (batch_seq on the wire).",
        "created_at": "When the batch was formed (epoch seconds).",
        "payload": "The encoded message (header byte + JSON or zlib); null once acknowledged.",
        "first_seq": "First reading seq in the batch (null: quarantine records only).",
        "last_seq": "Last reading seq in the batch.",
        "readings": "Readings in the batch.",
        "quarantined": "Quarantine records in the batch.",
        "send_count": "How many times it was published.",
        "first_sent_at": "First publish (epoch seconds).",
        "last_sent_at": "Latest publish (epoch seconds).",
        "acked_at": "When central's ack.v1 arrived (epoch seconds).",
        "ack_status": "'stored', 'rejected', or 'conflict' (central knew the id with other "
        "content: the readings went out again in a new incarnation).",
        "ack_json": "The ack message as received.",
        "payload_sha256": "sha256 of the payload: an ack.v2 naming other bytes is not applied.",
    },
    "alerts": {
        "": "The alert outbox: alert.v1 messages kept until their delivery is confirmed.",
        "alert_id": "Deterministic id (same reading and model, same id).",
        "kind": "Alert kind (`vocabulary.ALERT_KINDS`).",
        "meter_id": "The meter (or transformer meter) the alert is about.",
        "ts": "End of the reading or window the alert is about (epoch seconds).",
        "payload": "The alert.v1 JSON, frozen when raised.",
        "created_at": "When it was raised (epoch seconds).",
        "attempts": "How many times it was published.",
        "last_sent_at": "Latest publish (epoch seconds).",
        "acked_at": "When its delivery was confirmed (epoch seconds).",
    },
    "models": {
        "": "Accepted model.v1 messages, the newest few of each name.",
        "id": "Order of acceptance.",
        "name": "Model name (`iforest`, `iforest.<class>`, `iforest.intermittent`, "
        "`iforest.<class>.intermittent`).",
        "version": "Model version.",
        "created_at": "When central created it (as signed).",
        "sha256": "Digest of the ONNX bytes.",
        "message": "The model.v1 message as received.",
        "accepted_at": "When the agent accepted it (epoch seconds).",
        "public_key_sha256": "Digest of the public key that verified it.",
    },
    "meter_profiles": {
        "": "Each meter's long memory (`edge_agent.long_memory`), written with the readings that "
        "moved it.",
        "meter_id": "The meter.",
        "through_day": "Last local day folded in (days since 1970-01-01, the meter's clock).",
        "sums": "Per local hour, the decayed sum of its valid readings' power (24 float64, kW).",
        "weights": "Per local hour, the decayed count of those readings (24 float64).",
    },
    "counters": {
        "": "Monotonic counters (shown by `edge-agent status` and in status.v1).",
        "name": "Counter name.",
        "value": "Its value.",
    },
    "meta": {
        "": "Small durable values: source progress markers, sequence counters, incarnation.",
        "key": "Name.",
        "value": "Value (text).",
    },
    "spool_files": {
        "": "The spool directory's ledger: files taken, by content digest.",
        "sha256": "Digest of the file's content.",
        "name": "File name when taken.",
        "processed_at": "Last slice committed (epoch seconds).",
        "readings": "Readings accepted from it (informational).",
        "quarantined": "Records quarantined from it (informational).",
        "outcome": "'partial' while slices remain, then 'done' or 'failed'.",
        "records_done": "Records committed so far (a restart resumes after them).",
    },
}

#: The ClickHouse copies' own columns (the rest mirror PostgreSQL ``raw``).
CLICKHOUSE_NOTES: dict[str, dict[str, str]] = {
    "": {"loaded_at": "When the warehouse loader wrote the row (the ReplacingMergeTree version)."},
    "load_watermarks": {
        "": "The loader's progress per table, kept beside the data it describes.",
        "table_name": "The raw table loaded.",
        "watermark": "Rows with an arrival time below it are loaded.",
        "rows_loaded": "Rows loaded in total.",
        "updated_at": "When the watermark last moved.",
    },
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool | None  # None: the store does not say (dbt views)
    description: str = ""


@dataclass
class Table:
    name: str
    description: str = ""
    columns: list[Column] = field(default_factory=list)


# --- the stores ---------------------------------------------------------------------------


def buffer_tables() -> list[Table]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate_buffer(conn)
    tables = []
    names = [
        n
        for (n,) in conn.execute(
            "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' "
            "order by name"
        )
    ]
    for name in names:
        notes = BUFFER_NOTES.get(name, {})
        table = Table(name, notes.get("", ""))
        for _, col, ctype, notnull, _, pk in conn.execute(f'pragma table_info("{name}")'):
            described = _BUFFER_READING.get(col, "") if name == "readings" else ""
            table.columns.append(
                Column(col, ctype.lower(), not (notnull or pk), notes.get(col, described))
            )
        tables.append(table)
    conn.close()
    return tables


@contextlib.contextmanager
def scratch_postgres(admin_dsn: str) -> Iterator[str]:
    """A new database with the central migrations applied; dropped afterwards."""
    from central.db import migrate

    name = f"eiot_datadict_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def postgres_tables(dsn: str) -> list[Table]:
    tables: list[Table] = []
    with psycopg.connect(dsn) as conn:
        relations = conn.execute(
            "select c.oid, n.nspname || '.' || c.relname, c.relkind, "
            "coalesce(obj_description(c.oid, 'pg_class'), '') from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('raw', 'ml', 'ops') and c.relkind in ('r', 'v', 'p') "
            "and not c.relispartition "
            "order by 2"
        ).fetchall()
        for oid, name, kind, comment in relations:
            table = Table(name + (" (view)" if kind == "v" else ""), comment)
            for col, ctype, notnull, described in conn.execute(
                "select attname, format_type(atttypid, atttypmod), attnotnull, "
                "coalesce(col_description(attrelid, attnum), '') from pg_attribute "
                "where attrelid = %s and attnum > 0 and not attisdropped order by attnum",
                (oid,),
            ):
                if name == "raw.readings" and col in _READING:
                    described = _READING[col]
                table.columns.append(
                    Column(col, ctype, None if kind == "v" else not notnull, described)
                )
            tables.append(table)
    return tables


def clickhouse_tables(pg: Sequence[Table]) -> list[Table]:
    """The ClickHouse raw schema, created in a throwaway embedded engine."""
    from central.warehouse.client import connect
    from central.warehouse.schema import ensure_schema

    pg_notes = {t.name.removeprefix("raw."): {c.name: c.description for c in t.columns} for t in pg}
    pg_tables = {t.name.removeprefix("raw."): t.description for t in pg}
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(f"chdb://{Path(tmp) / 'wh'}")
        try:
            ensure_schema(client)
            rows = client.query(
                "select table, name, type from system.columns where database = 'raw' "
                "order by table, position"
            ).result_rows
        finally:
            client.close()
    tables: dict[str, Table] = {}
    for tname, col, ctype in rows:
        notes = CLICKHOUSE_NOTES.get(tname, {})
        table = tables.setdefault(
            tname, Table(f"raw.{tname}", notes.get("", pg_tables.get(tname, "")))
        )
        described = (
            notes.get(col)
            or CLICKHOUSE_NOTES[""].get(col)
            or pg_notes.get(tname, {}).get(col)
            or (_READING.get(col, "") if tname == "readings" else "")
        )
        nullable = ctype.removeprefix("LowCardinality(").startswith("Nullable(")
        table.columns.append(Column(col, ctype, nullable, described or ""))
    return list(tables.values())


def dbt_models(models_dir: Path = REPO / "dbt" / "models") -> list[Table]:
    """Every model's columns as its YAML declares them (``data_type``, ``description``)."""
    tables: list[Table] = []
    for layer in ("staging", "intermediate", "marts"):
        for yml in sorted((models_dir / layer).glob("_*.yml")):
            doc = yaml.safe_load(yml.read_text()) or {}
            for model in doc.get("models", []):
                table = Table(f"{layer}.{model['name']}", _flat(model.get("description", "")))
                for col in model.get("columns", []):
                    table.columns.append(
                        Column(
                            col["name"],
                            str(col.get("data_type", "")),
                            None,
                            _flat(col.get("description", "")),
                        )
                    )
                tables.append(table)
    return sorted(tables, key=lambda t: t.name)


def _flat(text: str) -> str:
    return " ".join(str(text).split())


# --- the document -------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(title: str, source: str, tables: Sequence[Table]) -> list[str]:
    lines = [f"## {title}", "", source, ""]
    for t in tables:
        lines += [f"### `{t.name}`", ""]
        if t.description:
            lines += [_cell(t.description), ""]
        lines += ["| column | type | null | description |", "|---|---|---|---|"]
        for c in t.columns:
            null = "" if c.nullable is None else ("yes" if c.nullable else "no")
            lines.append(f"| `{c.name}` | `{c.type}` | {null} | {_cell(c.description)} |")
        lines.append("")
    return lines


def render(
    buffer: Sequence[Table],
    postgres: Sequence[Table],
    clickhouse: Sequence[Table],
    models: Sequence[Table],
) -> str:
    lines = [
        "# Data dictionary",
        "",
        "Every table and column of the project's stores. Generated by `python -m "
        "central.datadict` (`make datadict`) from the stores themselves; do not edit by hand: "
        "`tests/test_datadict.py` fails when this file is not current. A reading's fields are "
        "defined once, in `edge_agent/fields.py` (see [contracts](contracts.md)).",
        "",
    ]
    lines += _section(
        "Gateway buffer (SQLite)",
        "One file per gateway (`db_path`), schema in `edge_agent/sql/`. Times are epoch seconds.",
        buffer,
    )
    lines += _section(
        "PostgreSQL (central)",
        "Schemas `raw` (what the ingest stores) and `ml` (models, rankings); migrations in "
        "`central/sql/`.",
        postgres,
    )
    lines += _section(
        "ClickHouse raw (warehouse)",
        "Copies of PostgreSQL `raw`, loaded incrementally (`central/warehouse/schema.py`).",
        clickhouse,
    )
    lines += _section(
        "Warehouse models (dbt)",
        "Staging views, intermediate and mart tables (`dbt/models/`), as their YAML declares them.",
        models,
    )
    lines += [
        "## Quarantine reasons",
        "",
        "A quarantine row's `reason` is a kind, alone or followed by `: ` and details; its kind "
        "is the warehouse's `reason_kind` and the label of central's "
        "`eiot_ingest_quarantined_rows_total`. The kinds, from `edge_agent/vocabulary.py` "
        "(`QUARANTINE_REASONS`):",
        "",
        "| kind | what it means |",
        "|---|---|",
        *(f"| `{kind}` | {_cell(meaning)} |" for kind, meaning in QUARANTINE_REASONS.items()),
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def generate(pg_dsn: str) -> str:
    """The dictionary, with PostgreSQL read from ``pg_dsn`` (a migrated database)."""
    postgres = postgres_tables(pg_dsn)
    return render(buffer_tables(), postgres, clickhouse_tables(postgres), dbt_models())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m central.datadict",
        description="Write docs/data-dictionary.md from the stores themselves (a scratch "
        "PostgreSQL database, an embedded ClickHouse, the dbt YAML).",
    )
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("EIOT_ADMIN_DSN", DEFAULT_ADMIN_DSN),
        help="a PostgreSQL database to create the scratch database from",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="file to write")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    with scratch_postgres(args.admin_dsn) as dsn:
        text = generate(dsn)
    current = args.out.read_text() if args.out.exists() else ""
    if args.check:
        if current != text:
            print(f"{args.out} is not current: run python -m central.datadict", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
