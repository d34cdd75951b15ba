"""The column order of a buffered reading: the ``readings`` table and every row tuple."""

from __future__ import annotations

from typing import Any

READING_COLUMNS = (
    "meter_id",
    "ts",  # end of interval, epoch seconds UTC
    "interval_s",
    "kwh",
    "register_kwh",
    "voltage_v",
    "current_a",
    "power_factor",
    "temperature_c",
    "humidity_pct",
    "wind_ms",
    "supply_on",  # 1 = on, 0 = off
    "flags",  # comma-separated, or None
    "score",
    "model_version",
)
Row = tuple[Any, ...]
