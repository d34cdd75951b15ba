"""The meters a gateway reads, as its registry describes them: which transformer each hangs under
(energy balance) and each customer's class (which anomaly model scores it).

A registry is a JSON file — a list of meter objects, or an object with ``"meters": [...]``
(``python -m simulator`` writes that as ``registry.json``) — with at least ``meter_id`` and, as
known, ``meter_role`` (``customer`` | ``transformer``), ``transformer_id``, ``customer_class`` and
``timezone`` (IANA name, where the meter's local clock is not the gateway's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def load_meters(path: Path | str) -> list[dict[str, Any]]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    meters = doc.get("meters") if isinstance(doc, dict) else doc
    if not isinstance(meters, list):
        raise ValueError(f"{path}: expected a list of meters or an object with 'meters'")
    return [m for m in meters if isinstance(m, dict)]


def customer_classes(meters: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{meter_id: customer_class}`` of the customer meters that name a class."""
    out: dict[str, str] = {}
    for m in meters:
        meter_id, cls = m.get("meter_id"), m.get("customer_class")
        if m.get("meter_role", "customer") != "customer":
            continue
        if isinstance(meter_id, str) and isinstance(cls, str) and cls:
            out[meter_id] = cls
    return out


def meter_zones(meters: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{meter_id: timezone}`` of the meters that name a zone; a zone this machine does not
    know is an error (a misspelt zone must not turn into UTC features)."""
    from edge_agent.localtime import check_zone

    out: dict[str, str] = {}
    for m in meters:
        meter_id, tz = m.get("meter_id"), m.get("timezone")
        if isinstance(meter_id, str) and isinstance(tz, str) and tz:
            try:
                out[meter_id] = check_zone(tz)
            except ValueError as exc:
                raise ValueError(f"registry meter {meter_id!r}: {exc}") from None
    return out
