"""A reading's fields, defined once: order, wire name, and column type in every store.

Everything that lists a reading's fields derives from :data:`READING_FIELDS` or is checked
against it by ``tests/test_definitions.py``:

* the gateway buffer (``edge_agent/sql``: table ``readings``) and its row tuples, in this order;
* ``wire.Reading`` (readings.v1 objects) and the readings.v2 columns (``edge_agent.columnar``);
* PostgreSQL ``raw.readings`` (``central/sql``) and central's rows (``central.rows``);
* ClickHouse ``raw.readings`` (``central.warehouse.schema``, generated from here) and the loader;
* the dbt source (``dbt/models/staging/_sources.yml``) and the Great Expectations suites;
* the data dictionary (``docs/data-dictionary.md``, generated).

A row is a plain tuple in this order (fast to build and to hand to SQLite or COPY); code names
positions with the constants below (``row[FLAGS]``), never with numbers. At the gateway ``ts``
is epoch seconds, ``supply`` is 1/0 (column ``supply_on``) and ``flags`` comma-separated text or
None; at central ``ts`` is an aware datetime, ``supply`` "on"/"off" and ``flags`` a list.

Adding a field: see ``docs/how-to-change.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """A column as the store's catalogue reports it (type text, NOT NULL)."""

    type: str
    not_null: bool = False


@dataclass(frozen=True)
class ReadingField:
    name: str  # wire name: the Reading attribute, the readings.v1 key, PG and ClickHouse column
    description: str
    sqlite: Column  # gateway buffer column (named ``column``)
    postgres: Column  # raw.readings
    clickhouse: str  # ClickHouse raw.readings type (nullability is part of the type there)
    column: str = ""  # gateway buffer column name, when it differs from ``name``
    measured: bool = True  # part of the measurement: a conflict is judged on these fields

    @property
    def buffer_column(self) -> str:
        return self.column or self.name


_REAL = Column("real")
_FLOAT8 = Column("double precision")
_NULL_F64 = "Nullable(Float64)"


def _optional_float(name: str, description: str) -> ReadingField:
    return ReadingField(name, description, _REAL, _FLOAT8, _NULL_F64)


READING_FIELDS: tuple[ReadingField, ...] = (
    ReadingField(
        "meter_id",
        "The meter (`vocabulary.ID_PATTERN`); with `ts` the natural key everywhere.",
        Column("text", True),
        Column("text", True),
        "String",
    ),
    ReadingField(
        "ts",
        "End of the interval the reading measures, UTC (the buffer: epoch seconds).",
        Column("integer", True),
        Column("timestamp with time zone", True),
        "DateTime64(3, 'UTC')",
    ),
    ReadingField(
        "interval_s",
        "Length of the interval in seconds (300..86400; 1800 when not sent).",
        Column("integer", True),
        Column("integer", True),
        "UInt32",
    ),
    ReadingField(
        "kwh",
        "Energy imported during the interval, kWh (>= 0, below the meter class's ceiling).",
        Column("real", True),
        Column("double precision", True),
        "Float64",
    ),
    _optional_float(
        "register_kwh", "Cumulative import register at ts, kWh; monotonic (a drop is flagged)."
    ),
    _optional_float("voltage_v", "Voltage, V (0..300)."),
    _optional_float("current_a", "Current, A (0..2000)."),
    _optional_float("power_factor", "Power factor (-1..1)."),
    _optional_float("temperature_c", "Air temperature, °C (weather context)."),
    _optional_float("humidity_pct", "Relative humidity, % (weather context)."),
    _optional_float("wind_ms", "Wind speed, m/s (weather context)."),
    ReadingField(
        "supply",
        "'on', or 'off' when the grid supplied nothing during the interval (the buffer: 1/0).",
        Column("integer", True),
        Column("text", True),
        "LowCardinality(String)",
        column="supply_on",
    ),
    ReadingField(
        "flags",
        "Meter events (`vocabulary.METER_FLAGS` and others); the buffer: comma-separated.",
        Column("text"),
        Column("text[]", True),
        "Array(LowCardinality(String))",
    ),
    ReadingField(
        "score",
        "Anomaly score the gateway's model gave the reading (higher = more anomalous): for a"
        " calibrated model, its level among the model's normal training readings (0..1).",
        _REAL,
        _FLOAT8,
        _NULL_F64,
        measured=False,
    ),
    ReadingField(
        "model_version",
        "Version of the model that scored the reading.",
        Column("text"),
        Column("text"),
        "LowCardinality(Nullable(String))",
        measured=False,
    ),
)

Row = tuple[Any, ...]

#: Wire names, in row order.
READING_NAMES: tuple[str, ...] = tuple(f.name for f in READING_FIELDS)
#: Gateway buffer columns, in row order.
READING_COLUMNS: tuple[str, ...] = tuple(f.buffer_column for f in READING_FIELDS)
#: The measured fields are the first ``N_MEASURED`` of a row (``row[:N_MEASURED]``).
N_MEASURED = sum(f.measured for f in READING_FIELDS)

# Named positions in a row.
(
    METER_ID,
    TS,
    INTERVAL_S,
    KWH,
    REGISTER_KWH,
    VOLTAGE_V,
    CURRENT_A,
    POWER_FACTOR,
    TEMPERATURE_C,
    HUMIDITY_PCT,
    WIND_MS,
    SUPPLY,
    FLAGS,
    SCORE,
    MODEL_VERSION,
) = range(15)
#: The optional measured floats, register to wind, as a slice of a row.
OPTIONAL_FLOATS = slice(REGISTER_KWH, WIND_MS + 1)


def position(name: str) -> int:
    """A field's position in a row, by wire name."""
    return READING_NAMES.index(name)


def make_row(**values: Any) -> Row:
    """A row from values by wire name; fields not given are None (tests, tools, benchmarks)."""
    unknown = set(values) - set(READING_NAMES)
    if unknown:
        raise TypeError(f"not a reading field: {', '.join(sorted(unknown))}")
    return tuple(values.get(name) for name in READING_NAMES)


def _check() -> None:
    """The named positions follow READING_FIELDS, and the measured fields come first."""
    for i, f in enumerate(READING_FIELDS):
        if globals().get(f.name.upper()) != i:
            raise RuntimeError(f"fields: position constant of {f.name!r} is not {i}")
    if not all(f.measured for f in READING_FIELDS[:N_MEASURED]):
        raise RuntimeError("fields: measured fields must come first")
    if len(READING_FIELDS) != MODEL_VERSION + 1:
        raise RuntimeError("fields: a field has no position constant")


_check()
