"""A gateway's registry file from the central registry: ``central registry export``.

The agent learns which transformer each of its meters hangs under, each customer's class and
load shape and any meter's own time zone from its registry file (``registry_path``,
:mod:`edge_agent.registry`). Central's ``raw.meters`` is where those are kept, and where a load
shape is pinned (``python -m ml load-shapes`` proposes it). This writes one gateway's file from
there, with the keys the agent reads (:data:`edge_agent.registry.REGISTRY_KEYS`), so a shape or a
class pinned centrally reaches the gateway the same way as its configuration: the file is
copied to the gateway and the agent restarted (it reads the registry at start).

Any login that may read ``raw.meters`` will do (the loader's or ml's). The file is written
whole or not at all (a temporary file renamed over it), and a gateway with no meter in the
registry is an error, not an empty file: an empty registry would quietly move every meter to the
global model and turn the energy balance off.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from edge_agent.registry import REGISTRY_KEYS, meter_model_keys, meter_zones
from edge_agent.vocabulary import ID_PATTERN


def gateway_registry(dsn: str, gateway_id: str) -> dict[str, Any]:
    """``{"gateway_id": ..., "meters": [...]}``: the meters ``raw.meters`` places on the gateway,
    by meter id, each with :data:`REGISTRY_KEYS` (null where unknown)."""
    if not re.fullmatch(ID_PATTERN, gateway_id):
        raise ValueError(f"not a gateway id: {gateway_id!r}")
    query = sql.SQL("select {} from raw.meters where gateway_id = %s order by meter_id").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in REGISTRY_KEYS)
    )
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(query, (gateway_id,)).fetchall()
    if not rows:
        raise LookupError(f"no meter of gateway {gateway_id!r} in raw.meters")
    meters = [dict(zip(REGISTRY_KEYS, row, strict=True)) for row in rows]
    # What the agent would refuse at start (a shape or zone it does not know) fails here first.
    meter_model_keys(meters)
    meter_zones(meters)
    return {"gateway_id": gateway_id, "meters": meters}


def write_registry(registry: dict[str, Any], path: Path) -> None:
    """Write ``registry`` as JSON to ``path``: a temporary file beside it, synced, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(registry, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
