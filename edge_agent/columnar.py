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
from typing import Any

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


def encode_columns(rows: Sequence[Row]) -> tuple[int, dict[str, Any]]:
    """Buffer rows → (n, columns). Rows are sorted by (meter_id, ts) first."""
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


def decode_columns(n: Any, columns: Any) -> list[dict[str, Any]]:
    """(n, columns) → reading objects (dicts, not yet validated). Raises ColumnError."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ColumnError("n must be a non-negative integer")
    if not isinstance(columns, dict):
        raise ColumnError("columns must be an object")
    unknown = set(columns) - KNOWN
    if unknown:
        raise ColumnError(f"unknown columns: {', '.join(sorted(map(str, unknown)))[:100]}")
    if n == 0:
        return []
    full: dict[str, list[Any]] = {}
    for name, value in columns.items():
        if isinstance(value, list):
            if len(value) != n:
                raise ColumnError(f"column {name} has {len(value)} values, expected {n}")
            full[name] = value
        elif name in ("ts_delta", "register_kwh_mdelta", "flags"):
            raise ColumnError(f"column {name} must be a list")
        else:
            full[name] = [value] * n
    if "ts_delta" not in full:
        raise ColumnError("column ts_delta is required")
    for coded, target, scale in (
        ("ts_delta", "ts", None),
        ("register_kwh_mdelta", "register_kwh", 1000),
    ):
        if coded in full:
            values = full.pop(coded)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ColumnError(f"column {coded} must hold integers")
            plain = _undelta(values)
            full[target] = plain if scale is None else [v / scale for v in plain]
    names = list(full)
    return [dict(zip(names, values, strict=True)) for values in zip(*full.values(), strict=True)]
