"""The meters a gateway reads, as its registry describes them: which transformer each hangs under
(energy balance) and each customer's class and load shape (which anomaly model scores it).

A registry is a JSON file — a list of meter objects, or an object with ``"meters": [...]``
(``python -m simulator`` writes that as ``registry.json``) — with at least ``meter_id`` and, as
known, ``meter_role`` (``customer`` | ``transformer``), ``transformer_id``, ``customer_class``,
``load_shape`` (:data:`~edge_agent.vocabulary.LOAD_SHAPES`, absent = ``continuous``) and
``timezone`` (IANA name, where the meter's local clock is not the gateway's). ``central registry
export`` writes one gateway's file from central's ``raw.meters``: ``{"gateway_id": ..., "meters":
[...]}``, each meter with :data:`REGISTRY_KEYS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.vocabulary import LOAD_SHAPES

log = logging.getLogger(__name__)

CONTINUOUS, INTERMITTENT = LOAD_SHAPES
#: What the agent reads of a registry meter; ``central registry export`` writes exactly these.
REGISTRY_KEYS = (
    "meter_id",
    "meter_role",
    "transformer_id",
    "customer_class",
    "load_shape",
    "timezone",
)


def load_meters(path: Path | str, gateway_id: str | None = None) -> list[dict[str, Any]]:
    """The meter objects of a registry file. A file that names another gateway than
    ``gateway_id`` (``central registry export`` writes its ``gateway_id``) is read all the same,
    with a warning: a copy of the wrong gateway's file moves meters to other models and its
    transformers to other meters."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    named = doc.get("gateway_id") if isinstance(doc, dict) else None
    if gateway_id is not None and named is not None and named != gateway_id:
        log.warning("%s is the registry of gateway %r, this is %r", path, named, gateway_id)
    meters = doc.get("meters") if isinstance(doc, dict) else doc
    if not isinstance(meters, list):
        raise ValueError(f"{path}: expected a list of meters or an object with 'meters'")
    return [m for m in meters if isinstance(m, dict)]


def model_keys(customer_class: str, load_shape: str = CONTINUOUS) -> tuple[str, ...]:
    """The models that may score a meter, best first, as suffixes of the model set's name
    (``iforest.<key>``); the global model (the name alone) comes after them all. An intermittent
    meter tries its class's intermittent forest, then the intermittent one of every class, then
    its class's; a continuous meter tries its class's. ``ml.modelset`` fits and picks members by
    the same keys."""
    if load_shape not in LOAD_SHAPES:
        raise ValueError(f"load_shape must be one of {LOAD_SHAPES}, not {load_shape!r}")
    if customer_class.split(".")[-1] in LOAD_SHAPES:  # its model name would be another member's
        raise ValueError(f"customer class {customer_class!r} names a load shape")
    keys: list[str] = []
    if load_shape == INTERMITTENT:
        if customer_class:
            keys.append(f"{customer_class}.{INTERMITTENT}")
        keys.append(INTERMITTENT)
    if customer_class:
        keys.append(customer_class)
    return tuple(keys)


def meter_model_keys(meters: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """``{meter_id: model keys}`` (:func:`model_keys`) of the customer meters that name a class
    or a load shape (an empty string or null names none). A load shape outside
    :data:`LOAD_SHAPES`, or a class named like one, is an error: a misspelt shape must not
    quietly put a meter under another forest."""
    out: dict[str, tuple[str, ...]] = {}
    for m in meters:
        meter_id, cls, shape = m.get("meter_id"), m.get("customer_class"), m.get("load_shape")
        if m.get("meter_role", "customer") != "customer" or not isinstance(meter_id, str):
            continue
        cls = cls if isinstance(cls, str) else ""
        try:
            keys = model_keys(cls, CONTINUOUS if shape is None or shape == "" else shape)
        except ValueError as exc:
            raise ValueError(f"registry meter {meter_id!r}: {exc}") from None
        if keys:
            out[meter_id] = keys
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
