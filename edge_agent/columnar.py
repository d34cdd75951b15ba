"""``readings.v2``: the same readings as ``readings.v1``, laid out by column for a smaller wire.

Gateways pay per megabyte. Row objects repeat every key and every meter id; zlib cannot remove
what changes a little from row to row (timestamps, cumulative registers). v2 sorts a batch by
``(meter_id, ts)`` and sends columns:

```
{"schema": "readings.v2", "gateway_id", "batch_id", "batch_seq", "sent_at",
 "n": <readings>, "columns": {<name>: [n values] | <one value for all rows>, ...},
 "quarantined": [...]}
```

Column names are the ``Reading`` field names, with two lossless transforms:

* ``ts_delta``: epoch seconds, the first absolute, each next one the difference to the previous;
* ``register_kwh_mdelta``: the register in integer thousandths of a kWh, delta-coded the same
  way; used only when every register value is present and exactly a multiple of 0.001 kWh
  (otherwise ``register_kwh`` goes as plain floats).

A column left out is missing for every row. v2 decodes to the v1 reading objects, which are
validated exactly as v1 readings are. Measured on simulated fleets: ~10 bytes per 30-minute
reading against ~23 for v1 (zlib on both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

from edge_agent.rows import READING_COLUMNS, Row

_PLAIN = (
    "interval_s",
    "kwh",
    "voltage_v",
    "current_a",
    "power_factor",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
    "score",
    "model_version",
)
KNOWN = {"meter_id", "ts_delta", "register_kwh", "register_kwh_mdelta", "supply", "flags", *_PLAIN}
_IDX = {name: i for i, name in enumerate(READING_COLUMNS)}
_DELTA = ("ts_delta", "register_kwh_mdelta")
ROW_FIELDS = (
    "meter_id",
    "ts",
    "interval_s",
    "kwh",
    "register_kwh",
    "voltage_v",
    "current_a",
    "power_factor",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
    "supply",
    "flags",
    "score",
    "model_version",
)


class ColumnError(ValueError):
    pass


def _delta(values: Sequence[int]) -> list[int]:
    return [values[0], *(values[i] - values[i - 1] for i in range(1, len(values)))]


def _undelta(values: Sequence[int]) -> list[int]:
    out: list[int] = []
    total = 0
    for i, v in enumerate(values):
        total = v if i == 0 else total + v
        out.append(total)
    return out


def _squeeze(values: list[Any]) -> Any:
    """One value when all rows share it."""
    first = values[0]
    return first if all(v == first for v in values) else values


def encode_columns(rows: Sequence[Row], presorted: bool = False) -> tuple[int, dict[str, Any]]:
    """Buffer rows → (n, columns). Rows are sorted by (meter_id, ts) first, unless the caller
    says they already are."""
    if not presorted:
        rows = sorted(rows, key=lambda r: (r[0], r[1]))
    n = len(rows)
    cols: dict[str, Any] = {}
    if not n:
        return 0, cols
    cols["meter_id"] = _squeeze([r[0] for r in rows])
    cols["ts_delta"] = _delta([r[1] for r in rows])
    reg = [r[_IDX["register_kwh"]] for r in rows]
    if any(v is not None for v in reg):
        milli = [None if v is None else round(v * 1000) for v in reg]
        if all(m is not None and m / 1000 == v for m, v in zip(milli, reg, strict=True)):
            cols["register_kwh_mdelta"] = _delta(milli)  # type: ignore[arg-type]
        else:
            cols["register_kwh"] = reg
    for name in _PLAIN:
        values = [r[_IDX[name]] for r in rows]
        if any(v is not None for v in values):
            cols[name] = _squeeze(values)
    supply = ["on" if r[_IDX["supply_on"]] else "off" for r in rows]
    if any(s == "off" for s in supply):
        cols["supply"] = supply
    flags = [r[_IDX["flags"]].split(",") if r[_IDX["flags"]] else [] for r in rows]
    if any(flags):
        cols["flags"] = flags
    return n, cols


def check_columns(n: Any, columns: Any) -> None:
    """The shape of a v2 batch: types, lengths, known names. Raises ColumnError."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ColumnError("n must be a non-negative integer")
    if not isinstance(columns, dict):
        raise ColumnError("columns must be an object")
    unknown = set(columns) - KNOWN
    if unknown:
        raise ColumnError(f"unknown columns: {', '.join(sorted(map(str, unknown)))[:100]}")
    if n == 0:
        return
    if "ts_delta" not in columns:
        raise ColumnError("column ts_delta is required")
    for name, value in columns.items():
        if isinstance(value, list):
            if len(value) != n:
                raise ColumnError(f"column {name} has {len(value)} values, expected {n}")
        elif name in _DELTA or name == "flags":
            raise ColumnError(f"column {name} must be a list")
    for name in _DELTA:
        if name in columns and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in columns[name]
        ):
            raise ColumnError(f"column {name} must hold integers")


def _full(n: int, columns: dict[str, Any]) -> dict[str, list[Any]]:
    """Every column as a list of n plain values (deltas undone)."""
    full = {k: (v if isinstance(v, list) else [v] * n) for k, v in columns.items()}
    full["ts"] = _undelta(full.pop("ts_delta"))
    if "register_kwh_mdelta" in full:
        full["register_kwh"] = [v / 1000 for v in _undelta(full.pop("register_kwh_mdelta"))]
    return full


def decode_columns(n: Any, columns: Any) -> list[dict[str, Any]]:
    """(n, columns) → reading objects (dicts, not yet validated). Raises ColumnError."""
    check_columns(n, columns)
    if n == 0:
        return []
    full = _full(n, columns)
    names = list(full)
    return [dict(zip(names, values, strict=True)) for values in zip(*full.values(), strict=True)]


# --- validation by column -------------------------------------------------------------------
# The fast path of central ingest: each column is validated against the very constraints of
# the ``Reading`` field it holds (derived from the model, so the two cannot drift), in one call.
# A batch with anything invalid takes the reading-by-reading path, which says what and why.

_ADAPTERS: dict[str, TypeAdapter[list[Any]]] = {}


def _adapter(name: str) -> TypeAdapter[list[Any]]:
    from edge_agent.wire import Reading  # wire imports this module

    if name not in _ADAPTERS:
        info = Reading.model_fields[name]
        item = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        _ADAPTERS[name] = TypeAdapter(list[item])  # type: ignore[valid-type]
    return _ADAPTERS[name]


def validated_rows(n: int, columns: dict[str, Any]) -> list[tuple[Any, ...]] | None:
    """Rows ``(meter_id, ts datetime, interval_s, kwh, register_kwh, voltage_v, current_a,
    power_factor, temperature_c, humidity_pct, wind_ms, supply, flags list, score,
    model_version)`` when every value is valid; None otherwise. ``check_columns`` first."""
    from edge_agent.wire import WIRE_MAX_KW, Reading  # wire imports this module

    if n == 0:
        return []
    full = _full(n, columns)
    out: list[list[Any]] = []
    try:
        for name in ROW_FIELDS:
            values = full.get(name)
            if values is None:
                default = Reading.model_fields[name].default
                if default is PydanticUndefined:
                    return None  # a required column is missing
                out.append([default] * n if name != "flags" else [[]] * n)
                continue
            checked = _adapter(name).validate_python(values)
            out.append([list(f) for f in checked] if name == "flags" else checked)
    except ValidationError:
        return None
    kwh, interval = out[3], out[2]
    if any(k > WIRE_MAX_KW * i / 3600.0 for k, i in zip(kwh, interval, strict=True)):
        return None
    return list(zip(*out, strict=True))
