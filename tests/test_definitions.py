"""One definition per concept: every copy of a reading's fields, the flag vocabulary and the id
pattern is derived from ``edge_agent.fields`` / ``edge_agent.vocabulary`` or checked here, so a
drift anywhere fails a test.

The stores are introspected as they are created (SQLite migrations applied to a new buffer, the
PostgreSQL migrations applied to a new database, the ClickHouse schema created in an embedded
engine), not read from their DDL text."""

from __future__ import annotations

import ast
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from central.db import migration_files
from central.rows import EXTRA_COLUMNS, reading_row, validated_rows
from central.warehouse.quality import QualityParams, load_suites
from edge_agent import wire
from edge_agent.buffer import Buffer
from edge_agent.codec import row_to_wire
from edge_agent.columnar import encode_columns
from edge_agent.feature_spec import DEFAULT_FLAG_BITS
from edge_agent.fields import (
    N_MEASURED,
    READING_COLUMNS,
    READING_FIELDS,
    READING_NAMES,
    position,
)
from edge_agent.registry import CONTINUOUS
from edge_agent.validate import reading_to_row
from edge_agent.vocabulary import (
    ALERT_KINDS,
    CENTRAL_ALERT_KINDS,
    ID_PATTERN,
    LOAD_SHAPES,
    METER_FLAGS,
    QUARANTINE_REASONS,
    SUPPLY_STATES,
    TAMPER_FLAGS,
    quarantine_reason,
)
from ml.customer import MIN_PEERS

REPO = Path(__file__).resolve().parents[1]
DBT = REPO / "dbt"
# What the ClickHouse and dbt copies of raw.readings add after PostgreSQL's columns.
WAREHOUSE_EXTRA = ("loaded_at",)


def full_reading() -> wire.Reading:
    """A reading with a distinct value in every field."""
    return wire.Reading(
        meter_id="m-1",
        ts="2026-03-01T00:30:00Z",
        interval_s=900,
        kwh=0.125,
        register_kwh=1234.5,
        voltage_v=229.5,
        current_a=1.5,
        power_factor=0.95,
        temperature_c=27.5,
        humidity_pct=61.0,
        wind_ms=3.5,
        supply="off",
        flags=("cover_open", "magnetic"),
        score=0.625,
        model_version="v7",
    )


# --- the wire and the rows ----------------------------------------------------------------


def test_the_wire_reading_has_the_defined_fields_in_order() -> None:
    assert tuple(wire.Reading.model_fields) == READING_NAMES
    assert all(not f.measured for f in READING_FIELDS[N_MEASURED:])
    assert READING_NAMES[N_MEASURED:] == ("score", "model_version")


def test_literal_vocabularies_match_the_definitions() -> None:
    assert typing.get_args(wire.AlertKind) == ALERT_KINDS
    assert set(CENTRAL_ALERT_KINDS) < set(ALERT_KINDS)
    supply = wire.Reading.model_fields["supply"].annotation
    assert typing.get_args(supply) == SUPPLY_STATES
    assert set(TAMPER_FLAGS) < set(METER_FLAGS)
    assert list(DEFAULT_FLAG_BITS) == list(METER_FLAGS)


def test_rows_put_every_field_at_its_position() -> None:
    r = full_reading()
    edge, central = reading_to_row(r), reading_row(r)
    assert len(edge) == len(central) == len(READING_FIELDS)
    for f in READING_FIELDS:
        value = getattr(r, f.name)
        i = position(f.name)
        if f.name == "ts":
            assert edge[i] == int(value.timestamp()) and central[i] == value
        elif f.name == "supply":
            assert edge[i] == 0 and central[i] == "off"
        elif f.name == "flags":
            assert edge[i] == "cover_open,magnetic" and central[i] == list(value)
        else:
            assert edge[i] == value and central[i] == value, f.name
    # buffer row -> wire -> reading: the same reading; v2 columns -> central rows: the same row
    assert wire.Reading.model_validate(row_to_wire(edge)) == r
    n, columns = encode_columns([edge])
    assert validated_rows(n, columns) == [central]


# --- the stores -----------------------------------------------------------------------------


# Column ORDER in a table is not checked: the code always names columns, and a field added later
# is appended by ALTER TABLE wherever it stands in READING_FIELDS. Names, types and NOT NULL are.


def test_gateway_buffer_readings_table_matches(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db")
    cols = {
        name: (ctype.lower(), bool(notnull))
        for _, name, ctype, notnull, _, _ in buffer.db.conn.execute("pragma table_info(readings)")
    }
    buffer.close()
    expected = {f.buffer_column: (f.sqlite.type, f.sqlite.not_null) for f in READING_FIELDS}
    assert {c: cols.get(c) for c in READING_COLUMNS} == expected
    own = {"seq", "accepted_at", "accept_seq", "batch_id", "acked_at"}  # the buffer's own
    assert set(cols) == set(expected) | own


@pytest.mark.services
def test_postgres_raw_readings_matches(pg: psycopg.Connection) -> None:
    cols = {
        name: (ctype, notnull)
        for name, ctype, notnull in pg.execute(
            "select attname, format_type(atttypid, atttypmod), attnotnull from pg_attribute "
            "where attrelid = 'raw.readings'::regclass and attnum > 0 and not attisdropped"
        )
    }
    expected = {f.name: (f.postgres.type, f.postgres.not_null) for f in READING_FIELDS}
    assert {c: cols.get(c) for c in READING_NAMES} == expected
    assert set(cols) == set(expected) | set(EXTRA_COLUMNS)


def test_postgres_load_shapes_are_the_vocabulary(pg: psycopg.Connection) -> None:
    (definition,) = pg.execute(
        "select pg_get_constraintdef(oid) from pg_constraint"
        " where conrelid = 'raw.meters'::regclass and contype = 'c'"
        " and pg_get_constraintdef(oid) like '%load_shape%'"
    ).fetchone() or (None,)
    assert definition is not None
    assert tuple(re.findall(r"'([a-z_]+)'::text", definition)) == LOAD_SHAPES
    for shape in LOAD_SHAPES:
        assert re.fullmatch(r"[a-z]+", shape)  # a model name suffix (ID_PATTERN) and an SQL word


def test_clickhouse_raw_readings_matches(tmp_path: Path) -> None:
    from central.warehouse.client import connect
    from central.warehouse.schema import ensure_schema

    client = connect(f"chdb://{tmp_path / 'wh'}")
    try:
        ensure_schema(client)
        cols = client.query(
            "select name, type from system.columns "
            "where database = 'raw' and table = 'readings' order by position"
        ).result_rows
    finally:
        client.close()
    types = {name: ctype for name, ctype in cols}
    expected = {f.name: f.clickhouse for f in READING_FIELDS}
    assert {c: types.get(c) for c in READING_NAMES} == expected
    assert set(types) == set(expected) | set(EXTRA_COLUMNS) | set(WAREHOUSE_EXTRA)


def test_clickhouse_raw_meters_has_postgres_columns_whether_new_or_upgraded(
    tmp_path: Path, pg: psycopg.Connection
) -> None:
    """The warehouse's meters carry every column of PostgreSQL's raw.meters, and the same
    columns in the same order when made now and when made by the first release and upgraded
    (ADDED_COLUMNS)."""
    from central.warehouse.client import connect
    from central.warehouse.schema import ensure_schema
    from tests.support.warehouse import FIRST_RELEASE_METERS

    pg_columns = [
        name
        for (name,) in pg.execute(
            "select column_name from information_schema.columns"
            " where table_schema = 'raw' and table_name = 'meters' order by ordinal_position"
        ).fetchall()
    ]

    def columns(client: Any) -> list[str]:
        rows = client.query(
            "select name from system.columns "
            "where database = 'raw' and table = 'meters' order by position"
        ).result_rows
        return [name for (name,) in rows]

    made = connect(f"chdb://{tmp_path / 'new'}")
    try:
        ensure_schema(made)
        new = columns(made)
    finally:
        made.close()
    old = connect(f"chdb://{tmp_path / 'old'}")
    try:
        old.command("create database raw")
        old.command(FIRST_RELEASE_METERS.format(db="raw"))
        ensure_schema(old)
        ensure_schema(old)  # idempotent
        upgraded = columns(old)
    finally:
        old.close()
    assert new == upgraded
    assert sorted(new) == sorted([*pg_columns, *WAREHOUSE_EXTRA])


def test_dbt_source_declares_the_raw_readings_columns() -> None:
    doc = yaml.safe_load((DBT / "models" / "staging" / "_sources.yml").read_text())
    (source,) = doc["sources"]
    (readings,) = [t for t in source["tables"] if t["name"] == "readings"]
    declared = [(c["name"], c.get("description")) for c in readings["columns"]]
    fields = [(f.name, f.description) for f in READING_FIELDS]
    assert declared[: len(fields)] == fields
    assert tuple(n for n, _ in declared[len(fields) :]) == (*EXTRA_COLUMNS, *WAREHOUSE_EXTRA)


def test_dbt_vars_carry_the_vocabulary() -> None:
    project = yaml.safe_load((DBT / "dbt_project.yml").read_text())
    assert tuple(project["vars"]["tamper_flags"]) == TAMPER_FLAGS
    assert project["vars"]["default_load_shape"] == CONTINUOUS
    # the warehouse's "far below its peers" and the central ranking form peer groups alike
    assert project["vars"]["peer_min_meters"] == MIN_PEERS


def _accepted_values(column: dict[str, Any]) -> list[list[str]]:
    found = []
    for test in column.get("data_tests", []):
        if isinstance(test, dict) and "accepted_values" in test:
            spec = test["accepted_values"]
            found.append(spec.get("arguments", spec)["values"])
    return found


def test_dbt_accepted_values_are_the_vocabulary() -> None:
    vocabulary = {"alert_kind": ALERT_KINDS, "load_shape": LOAD_SHAPES}
    checked = set()
    for path in (DBT / "models").rglob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            for column in model.get("columns", []):
                if column["name"] in vocabulary:
                    for values in _accepted_values(column):
                        assert tuple(values) == vocabulary[column["name"]], (path.name, column)
                        checked.add(column["name"])
    assert checked == set(vocabulary)


def test_the_alert_kind_comment_names_every_kind() -> None:
    comments = [
        text for _, text in migration_files() if "comment on column raw.alerts.kind" in text
    ]
    newest = comments[-1]
    assert all(kind in newest for kind in ALERT_KINDS)


# --- the quality suites ---------------------------------------------------------------------


def _columns_of(expectation: Any) -> set[str]:
    named = set()
    for attr in ("column", "column_A", "column_B"):
        value = getattr(expectation, attr, None)
        if isinstance(value, str):
            named.add(value)
    named |= set(getattr(expectation, "column_list", None) or ())
    return named


def test_quality_suites_name_only_defined_columns() -> None:
    with warnings.catch_warnings():  # GX warns about its own deprecations at import time
        warnings.simplefilter("ignore", DeprecationWarning)
        module = load_suites(REPO / "gx")
    suites = {s.name: s for s in module.raw_suites(QualityParams())}
    readings = suites["raw_readings"]
    used = set().union(*(_columns_of(e) for e in readings.expectations)) | set(readings.key)
    assert used <= set(READING_NAMES) | set(EXTRA_COLUMNS)
    regexes = {e.regex for s in suites.values() for e in s.expectations if hasattr(e, "regex")}
    assert regexes == {ID_PATTERN}
    supply = [e for e in readings.expectations if getattr(e, "column", None) == "supply"]
    assert any(list(getattr(e, "value_set", [])) == list(SUPPLY_STATES) for e in supply)
    marts_yml = yaml.safe_load((DBT / "models" / "marts" / "_marts.yml").read_text())
    declared = {m["name"]: {c["name"] for c in m.get("columns", [])} for m in marts_yml["models"]}
    for suite in module.mart_suites(QualityParams()):
        used = set().union(*(_columns_of(e) for e in suite.expectations)) | set(suite.key)
        assert used <= declared[suite.table], (suite.name, used - declared[suite.table])


# --- quarantine reasons -----------------------------------------------------------------------

# Calls that take a quarantine reason, and the position of that argument.
_REASON_ARG = {"quarantine": 1, "BadMessage": 0, "_bad": 0, "DecodeError": 0, "ForeignMeter": 0}


def _reason_arguments() -> list[tuple[str, ast.expr]]:
    found = []
    for path in sorted([*REPO.glob("edge_agent/**/*.py"), *REPO.glob("central/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if (
                name == "of"
                and isinstance(f, ast.Attribute)
                and "QuarantineRecord" in ast.unparse(f)
            ):
                found.append((where, node.args[1]))
            elif name in _REASON_ARG and len(node.args) > _REASON_ARG[name]:
                found.append((where, node.args[_REASON_ARG[name]]))
            found += [(where, kw.value) for kw in node.keywords if kw.arg == "quarantine"]
            if name == "quarantine_reason":  # wherever it is called (a reason kept for later)
                found.append((where, node))
    return found


def test_every_quarantine_reason_is_made_from_the_vocabulary() -> None:
    """No reason written by hand: each is ``quarantine_reason(KIND, ...)`` with a known kind, a
    wire decode error's code, or a variable holding one of those."""
    args = _reason_arguments()
    assert len(args) > 30  # the scan finds the call sites
    loose = []
    for where, arg in args:
        if isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "quarantine_reason":
            kind = arg.args[0]  # a literal, or a variable that holds one (DecodeError's)
            if not isinstance(kind, ast.Name) and not (
                isinstance(kind, ast.Constant) and kind.value in QUARANTINE_REASONS
            ):
                loose.append(f"{where}: unknown kind {ast.unparse(kind)}")
        elif isinstance(arg, ast.Constant | ast.JoinedStr | ast.BinOp):
            if not (isinstance(arg, ast.Constant) and arg.value in QUARANTINE_REASONS):
                loose.append(f"{where}: {ast.unparse(arg)[:60]}")
    assert not loose, loose


def test_quarantine_reason_kinds_are_words_with_a_meaning() -> None:
    for kind, meaning in QUARANTINE_REASONS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,39}", kind), kind
        assert meaning.endswith(".") and len(meaning) > 10, kind
    assert quarantine_reason("conflict") == "conflict"
    assert quarantine_reason("invalid", "kwh: negative") == "invalid: kwh: negative"
    with pytest.raises(ValueError):
        quarantine_reason("not_a_kind")
    with pytest.raises(ValueError):
        wire.DecodeError("not_a_kind")
