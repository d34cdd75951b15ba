"""The central meter registry (``raw.meters``) and the gateways' registry files: ``central
registry pin-shapes`` and ``central registry export``.

**Pinning load shapes.** ``python -m ml load-shapes --out proposals.json`` proposes each
customer meter's load shape from months of its readings and writes nothing (the ml role reads
``raw``). :func:`pin_shapes` applies the ``set`` proposals (meters with no shape pinned) to
``raw.meters``, in one transaction, never over a shape pinned meanwhile; ``review`` proposals
(the readings disagree with the pinned shape: a thief zeroing readings looks intermittent) are
listed for a person, never applied. It is run as the registry's owner (no service role may
write ``raw.meters``), and moves ``updated_at`` so the warehouse loads the change.

**Exporting a gateway's registry.**

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from edge_agent.registry import REGISTRY_KEYS, meter_model_keys, meter_zones
from edge_agent.vocabulary import ID_PATTERN, LOAD_SHAPES

#: A proposals file larger than this is refused unread (one row is ~150 bytes).
MAX_PROPOSALS_BYTES = 64 * 1024 * 1024


class ShapeProposal(BaseModel):
    """One row of ``python -m ml load-shapes --out`` (``ml.load_shape.Proposal`` and its
    action); other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    meter_id: str = Field(pattern=ID_PATTERN)
    pinned: str | None
    decided: str
    action: Literal["set", "keep", "review", "wait"]

    @field_validator("pinned", "decided")
    @classmethod
    def _a_shape(cls, value: str | None) -> str | None:
        if value is not None and value not in LOAD_SHAPES:
            raise ValueError(f"not one of {LOAD_SHAPES}")
        return value


_PROPOSALS = TypeAdapter(list[ShapeProposal])


def read_proposals(path: Path) -> list[ShapeProposal]:
    """The proposals file, checked whole: ValueError names what is wrong and where."""
    size = path.stat().st_size
    if size > MAX_PROPOSALS_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than {MAX_PROPOSALS_BYTES}")
    try:
        return _PROPOSALS.validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"{path}: {exc.error_count()} error(s); first at {where or 'top'}: {first['msg']}"
        ) from None


@dataclass
class Pinned:
    """What :func:`pin_shapes` did."""

    pinned: list[tuple[str, str]] = field(default_factory=list)  # (meter_id, shape)
    not_pinned: list[str] = field(default_factory=list)  # pinned meanwhile, or not registered
    review: list[ShapeProposal] = field(default_factory=list)


def pin_shapes(dsn: str, proposals: Sequence[ShapeProposal], *, dry_run: bool = False) -> Pinned:
    """Apply the ``set`` proposals to ``raw.meters`` in one transaction (none with ``dry_run``)."""
    out = Pinned(review=[p for p in proposals if p.action == "review"])
    wanted = {p.meter_id: p.decided for p in proposals if p.action == "set"}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        with conn.transaction(force_rollback=dry_run):
            for meter_id, shape in sorted(wanted.items()):
                row = conn.execute(
                    "update raw.meters set load_shape = %s, updated_at = now()"
                    " where meter_id = %s and load_shape is null returning meter_id",
                    (shape, meter_id),
                ).fetchone()
                if row is None:
                    out.not_pinned.append(meter_id)
                else:
                    out.pinned.append((meter_id, shape))
    return out


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
