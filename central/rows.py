"""Central's reading rows: tuples in ``edge_agent.fields`` order, as ``raw.readings`` stores them.

``ts`` is an aware datetime, ``supply`` "on"/"off", ``flags`` a list. Built from validated
``Reading`` objects (:func:`reading_row`) or, on the fast path of a readings.v2 batch, straight
from its columns (:func:`validated_rows`), each column validated against the very constraints of
the ``Reading`` field it holds, so the two paths cannot drift.
"""

from __future__ import annotations

import json
import operator
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

from edge_agent import wire
from edge_agent.columnar import full_columns
from edge_agent.fields import FLAGS, INTERVAL_S, KWH, READING_FIELDS, READING_NAMES, TS, Row

#: Columns of ``raw.readings`` after the reading's own fields, filled by the ingest.
EXTRA_COLUMNS = ("gateway_id", "batch_id", "received_at")

# PostgreSQL type (as the catalogue names it) → the binary COPY type name.
_COPY_TYPE = {
    "text": "text",
    "timestamp with time zone": "timestamptz",
    "integer": "int4",
    "double precision": "float8",
    "text[]": "text[]",
}
#: Types of the columns a binary COPY of rows (plus gateway_id, batch_id) sends.
COPY_TYPES: tuple[str, ...] = (
    *(_COPY_TYPE[f.postgres.type] for f in READING_FIELDS),
    "text",
    "text",
)


_VALUES = operator.attrgetter(*READING_NAMES)


def reading_row(r: wire.Reading) -> Row:
    values = _VALUES(r)
    return (*values[:FLAGS], list(values[FLAGS]), *values[FLAGS + 1 :])


def row_json(row: Row) -> str:
    """A row as the compact JSON of its wire reading (for a quarantine record)."""
    out = {name: v for name, v in zip(READING_NAMES, row, strict=True) if v is not None}
    out["ts"] = wire.iso_z(row[TS])
    return json.dumps(out, separators=(",", ":"))


_ADAPTERS: dict[str, TypeAdapter[list[Any]]] = {}


def _adapter(name: str) -> TypeAdapter[list[Any]]:
    if name not in _ADAPTERS:
        info = wire.Reading.model_fields[name]
        item = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        _ADAPTERS[name] = TypeAdapter(list[item])  # type: ignore[valid-type]
    return _ADAPTERS[name]


def validated_rows(n: int, columns: dict[str, Any]) -> list[Row] | None:
    """Rows of a readings.v2 batch when every value is valid; None otherwise (the caller then
    validates reading by reading, which says what and why). ``check_columns`` first."""
    if n == 0:
        return []
    full = full_columns(n, columns)
    out: list[list[Any]] = []
    try:
        for name in READING_NAMES:
            values = full.get(name)
            if values is None:
                default = wire.Reading.model_fields[name].default
                if default is PydanticUndefined:
                    return None  # a required column is missing
                out.append([default] * n if name != "flags" else [[]] * n)
                continue
            checked = _adapter(name).validate_python(values)
            out.append([list(f) for f in checked] if name == "flags" else checked)
    except ValidationError:
        return None
    kwh, interval, ts = out[KWH], out[INTERVAL_S], out[TS]
    if any(k > wire.WIRE_MAX_KW * i / 3600.0 for k, i in zip(kwh, interval, strict=True)):
        return None
    if any(wire.ts_problem(t, i) for t, i in zip(ts, interval, strict=True)):
        return None
    return list(zip(*out, strict=True))
