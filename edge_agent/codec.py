"""Buffer rows ⇄ wire dicts, without building a pydantic object per reading on the hot path.

A buffer row holds a reading that was validated when it was accepted, so turning it into its wire
form is plain formatting. Fields equal to the wire defaults (``interval_s = 1800``,
``supply = "on"``, no flags) and missing values are left out: gateways pay per byte, and the
receiver's validation fills the defaults back in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge_agent.rows import READING_COLUMNS, Row
from edge_agent.wire import Reading

_OPTIONAL_FLOATS = READING_COLUMNS[4:11]
DEFAULT_INTERVAL_S = 1800


def ts_to_iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reading_to_row(r: Reading) -> Row:
    return (
        r.meter_id,
        int(r.ts.timestamp()),
        r.interval_s,
        r.kwh,
        r.register_kwh,
        r.voltage_v,
        r.current_a,
        r.power_factor,
        r.temperature_c,
        r.humidity_pct,
        r.wind_ms,
        1 if r.supply == "on" else 0,
        ",".join(r.flags) if r.flags else None,
        r.score,
        r.model_version,
    )


def row_to_wire(row: Row) -> dict[str, Any]:
    """A buffer row → the compact wire dict of a ``Reading``."""
    out: dict[str, Any] = {"meter_id": row[0], "ts": ts_to_iso(row[1])}
    if row[2] != DEFAULT_INTERVAL_S:
        out["interval_s"] = row[2]
    out["kwh"] = row[3]
    for name, value in zip(_OPTIONAL_FLOATS, row[4:11], strict=True):
        if value is not None:
            out[name] = value
    if not row[11]:
        out["supply"] = "off"
    if row[12]:
        out["flags"] = row[12].split(",")
    if row[13] is not None:
        out["score"] = row[13]
    if row[14] is not None:
        out["model_version"] = row[14]
    return out


def measured_equal(a: Row, b: Row) -> bool:
    """Two rows for the same key carry the same measurement (score and model are not measured)."""
    return a[:13] == b[:13]
