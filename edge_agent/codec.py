"""Buffer rows → the wire dicts of readings, without building a pydantic object per reading.

A buffer row holds a reading that was validated when it was accepted, so turning it into its wire
form is plain formatting. Fields equal to the wire defaults (``interval_s = 1800``,
``supply = "on"``, no flags) and missing values are left out: gateways pay per byte, and the
receiver's validation fills the defaults back in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge_agent.fields import (
    FLAGS,
    INTERVAL_S,
    KWH,
    METER_ID,
    MODEL_VERSION,
    N_MEASURED,
    OPTIONAL_FLOATS,
    READING_NAMES,
    SCORE,
    SUPPLY,
    TS,
    Row,
)

_OPTIONAL_FLOAT_NAMES = READING_NAMES[OPTIONAL_FLOATS]
DEFAULT_INTERVAL_S = 1800


def ts_to_iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_to_wire(row: Row) -> dict[str, Any]:
    """A buffer row → the compact wire dict of a ``Reading``."""
    out: dict[str, Any] = {"meter_id": row[METER_ID], "ts": ts_to_iso(row[TS])}
    if row[INTERVAL_S] != DEFAULT_INTERVAL_S:
        out["interval_s"] = row[INTERVAL_S]
    out["kwh"] = row[KWH]
    for name, value in zip(_OPTIONAL_FLOAT_NAMES, row[OPTIONAL_FLOATS], strict=True):
        if value is not None:
            out[name] = value
    if not row[SUPPLY]:
        out["supply"] = "off"
    if row[FLAGS]:
        out["flags"] = row[FLAGS].split(",")
    if row[SCORE] is not None:
        out["score"] = row[SCORE]
    if row[MODEL_VERSION] is not None:
        out["model_version"] = row[MODEL_VERSION]
    return out


def measured_equal(a: Row, b: Row) -> bool:
    """Two rows for the same key carry the same measurement (score and model are not measured)."""
    return a[:N_MEASURED] == b[:N_MEASURED]
