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
validated exactly as v1 readings are. ``bench.e2e`` reports the bytes per reading on the wire
(``wire_bytes_per_reading``; results in ``bench/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from edge_agent.fields import FLAGS, METER_ID, READING_NAMES, REGISTER_KWH, SUPPLY, TS, Row

# Fields with a coding of their own; every other field is a plain column.
_CODED = ("meter_id", "ts", "register_kwh", "supply", "flags")
_PLAIN = tuple((name, i) for i, name in enumerate(READING_NAMES) if name not in _CODED)
_DELTA = ("ts_delta", "register_kwh_mdelta")
# Bounds of the delta-coded columns once summed: epoch seconds of years 1970..9999, and a
# register below 10^12 kWh. Anything else is a hostile or broken batch, refused whole.
_TS_MAX = 253_402_300_799
_MILLI_KWH_MAX = 10**15
KNOWN = frozenset(
    {"meter_id", "ts_delta", "register_kwh", "register_kwh_mdelta", "supply", "flags"}
    | {name for name, _ in _PLAIN}
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
        rows = sorted(rows, key=lambda r: (r[METER_ID], r[TS]))
    n = len(rows)
    cols: dict[str, Any] = {}
    if not n:
        return 0, cols
    cols["meter_id"] = _squeeze([r[METER_ID] for r in rows])
    cols["ts_delta"] = _delta([r[TS] for r in rows])
    reg = [r[REGISTER_KWH] for r in rows]
    if any(v is not None for v in reg):
        milli = [None if v is None else round(v * 1000) for v in reg]
        if all(m is not None and m / 1000 == v for m, v in zip(milli, reg, strict=True)):
            cols["register_kwh_mdelta"] = _delta(milli)  # type: ignore[arg-type]
        else:
            cols["register_kwh"] = reg
    for name, i in _PLAIN:
        values = [r[i] for r in rows]
        if any(v is not None for v in values):
            cols[name] = _squeeze(values)
    supply = ["on" if r[SUPPLY] else "off" for r in rows]
    if any(s == "off" for s in supply):
        cols["supply"] = supply
    flags = [r[FLAGS].split(",") if r[FLAGS] else [] for r in rows]
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
    _check_sums(columns)


def _check_sums(columns: dict[str, Any]) -> None:
    """The delta-coded columns, summed, stay within their bounds."""
    epochs = _undelta(columns["ts_delta"])
    if min(epochs) < 0 or max(epochs) > _TS_MAX:
        raise ColumnError("column ts_delta sums to a time outside years 1970..9999")
    if "register_kwh_mdelta" in columns:
        milli = _undelta(columns["register_kwh_mdelta"])
        if min(milli) < -_MILLI_KWH_MAX or max(milli) > _MILLI_KWH_MAX:
            raise ColumnError("column register_kwh_mdelta sums to an impossible register")


def full_columns(n: int, columns: dict[str, Any]) -> dict[str, list[Any]]:
    """Every column as a list of n plain values: deltas undone, ``ts`` as aware datetimes (the
    epoch seconds of the contract, never read as anything else). Raises ColumnError."""
    _check_sums(columns)
    full = {k: (v if isinstance(v, list) else [v] * n) for k, v in columns.items()}
    full["ts"] = [datetime.fromtimestamp(t, UTC) for t in _undelta(full.pop("ts_delta"))]
    if "register_kwh_mdelta" in full:
        full["register_kwh"] = [v / 1000 for v in _undelta(full.pop("register_kwh_mdelta"))]
    return full


def decode_columns(n: Any, columns: Any) -> list[dict[str, Any]]:
    """(n, columns) → reading objects (dicts, not yet validated). Raises ColumnError."""
    check_columns(n, columns)
    if n == 0:
        return []
    full = full_columns(n, columns)
    names = list(full)
    return [dict(zip(names, values, strict=True)) for values in zip(*full.values(), strict=True)]
