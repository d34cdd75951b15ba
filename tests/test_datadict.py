"""The data dictionary (docs/data-dictionary.md) is current, and its notes name real columns."""

from __future__ import annotations

import pytest

from central import datadict


@pytest.mark.services
def test_the_data_dictionary_is_current(pg_dsn: str) -> None:
    text = datadict.generate(pg_dsn)
    assert datadict.OUT.read_text() == text, "stale: run `make datadict` and commit the result"


def test_every_note_names_a_real_column() -> None:
    buffer = {t.name: {c.name for c in t.columns} for t in datadict.buffer_tables()}
    for table, notes in datadict.BUFFER_NOTES.items():
        assert table in buffer, table
        assert set(notes) - {""} <= buffer[table], (table, set(notes) - buffer[table])
    # every bookkeeping column of the buffer is described (a reading's fields by fields.py)
    undescribed = [
        (t.name, c.name) for t in datadict.buffer_tables() for c in t.columns if not c.description
    ]
    assert undescribed == []


def test_every_postgres_column_is_described(pg_dsn: str) -> None:
    missing = [
        (t.name, c.name)
        for t in datadict.postgres_tables(pg_dsn)
        for c in [*t.columns, datadict.Column("(table)", "", None, t.description)]
        if not c.description
    ]
    assert missing == []


def test_warehouse_columns_that_hold_nulls_are_marked_so(pg_dsn: str) -> None:
    """A ClickHouse column may hold null when its type is Nullable, also inside LowCardinality."""
    tables = datadict.clickhouse_tables(datadict.postgres_tables(pg_dsn))
    columns = [c for t in tables for c in t.columns]
    assert any(c.type.startswith("LowCardinality(Nullable(") for c in columns)
    for c in columns:
        assert c.nullable == ("Nullable(" in c.type), (c.name, c.type)
