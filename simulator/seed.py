"""Loader for the seed project's CSV (Kaggle "Smart Meter Electricity Consumption Dataset").

Columns: ``Timestamp, Electricity_Consumed, Temperature, Humidity, Wind_Speed,
Avg_Past_Consumption, Anomaly_Label``. Every numeric column there is min-max normalised to 0..1:
values are kept as given (``kwh`` is NOT in kWh, ``temperature_c`` not in degrees).
``Avg_Past_Consumption`` is derived from ``Electricity_Consumed`` and is dropped.

Time: ``Timestamp`` ("2024-01-01 00:30:00", naive) is read as UTC and as the START of the
interval (the file begins at 00:00:00), so the wire ``ts`` (END of the interval) is
Timestamp + interval_s. The interval is the most common step between rows (1800 s in the seed).

Bad rows never stop the load: each becomes an ``errors`` entry (line number, message, raw line).
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import ID_RE

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
REQUIRED = ("Timestamp", "Electricity_Consumed", "Anomaly_Label")
OPTIONAL = {"Temperature": "temperature_c", "Humidity": "humidity_pct", "Wind_Speed": "wind_ms"}
# Same bounds as the wire's Reading, so every loaded row is a valid reading.
BOUNDS = {"temperature_c": (-60.0, 70.0), "humidity_pct": (0.0, 100.0), "wind_ms": (0.0, 100.0)}
LABELS = ("Normal", "Abnormal")
DEFAULT_INTERVAL_S = 1800


@dataclass
class SeedLoad:
    readings: list[dict[str, Any]] = field(default_factory=list)  # wire keys
    labels: list[tuple[str, str, str]] = field(default_factory=list)  # (meter_id, ts, label)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line, message, raw)
    interval_s: int = DEFAULT_INTERVAL_S


def _lines(source: str | os.PathLike[str] | Iterable[str]) -> Iterable[str]:
    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8", newline="") as fh:
            yield from fh
    else:
        yield from source


def _number(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{column} {text!r} is not a finite number")
    return value


def load_seed_csv(
    source: str | os.PathLike[str] | Iterable[str],
    meter_id: str = "seed-0001",
    interval_s: int | None = None,
) -> SeedLoad:
    """Read the seed CSV (a path, or an iterable of lines) into wire-shaped readings, labels
    and per-row errors."""
    if not ID_RE.match(meter_id):
        raise ValueError(f"meter_id {meter_id!r} does not match {ID_RE.pattern}")
    out = SeedLoad()
    rows: list[tuple[int, datetime, dict[str, Any], str]] = []
    header: list[str] | None = None
    seen: dict[datetime, int] = {}
    for line_no, raw in enumerate(_lines(source), start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            values = next(csv.reader([text]))
        except csv.Error as exc:
            out.errors.append((line_no, f"unreadable CSV: {exc}", text))
            continue
        if header is None:
            header = [v.strip() for v in values]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                out.errors.append(
                    (
                        line_no,
                        f"header lacks column(s) {', '.join(missing)}; "
                        f"expected {', '.join(REQUIRED)}",
                        text,
                    )
                )
                return out
            continue
        if len(values) != len(header):
            out.errors.append((line_no, f"expected {len(header)} fields, got {len(values)}", text))
            continue
        rec = dict(zip(header, (v.strip() for v in values), strict=True))
        try:
            try:
                start = datetime.strptime(rec["Timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                raise ValueError(
                    f"Timestamp {rec['Timestamp']!r} is not 'YYYY-MM-DD HH:MM:SS'"
                ) from None
            if start in seen:
                raise ValueError(
                    f"duplicate Timestamp {rec['Timestamp']!r} (first on line {seen[start]})"
                )
            kwh = _number(rec["Electricity_Consumed"], "Electricity_Consumed")
            if kwh < 0:
                raise ValueError(f"Electricity_Consumed {kwh} is negative")
            reading: dict[str, Any] = {"kwh": kwh}
            for column, key in OPTIONAL.items():
                if column in rec and rec[column] != "":
                    value = _number(rec[column], column)
                    lo, hi = BOUNDS[key]
                    if not lo <= value <= hi:
                        raise ValueError(f"{column} {value} outside {lo:g}..{hi:g}")
                    reading[key] = value
            label = rec["Anomaly_Label"]
            if label not in LABELS:
                raise ValueError(f"Anomaly_Label {label!r} is not one of {', '.join(LABELS)}")
        except ValueError as exc:
            out.errors.append((line_no, str(exc), text))
            continue
        seen[start] = line_no
        rows.append((line_no, start, reading, label))

    if header is None:
        out.errors.append((0, "empty input: no header line", ""))
        return out
    out.interval_s = interval_s or _infer_interval([r[1] for r in rows])
    step = timedelta(seconds=out.interval_s)
    for _, start, reading, label in rows:
        ts = (start + step).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.readings.append(
            {"meter_id": meter_id, "ts": ts, "interval_s": out.interval_s, **reading}
        )
        out.labels.append((meter_id, ts, label))
    return out


def _infer_interval(starts: list[datetime]) -> int:
    ordered = sorted(starts)
    steps = Counter(
        int((b - a).total_seconds()) for a, b in zip(ordered, ordered[1:], strict=False)
    )
    steps.pop(0, None)
    if not steps:
        return DEFAULT_INTERVAL_S
    step = steps.most_common(1)[0][0]
    return step if 300 <= step <= 86400 else DEFAULT_INTERVAL_S
