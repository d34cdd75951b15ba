"""The central meter registry (``raw.meters``) and the gateways' registry files: ``central
registry pin-shapes`` and ``central registry export``.

**Pinning load shapes.** ``python -m ml load-shapes --out proposals.json`` proposes each
customer meter's load shape from months of its readings and writes nothing (the ml role reads
``raw``). :func:`pin_shapes` applies the ``set`` proposals to ``raw.meters``, in one
transaction, for registered customer meters with no shape pinned (never over a shape pinned
meanwhile); ``review`` proposals (the readings disagree with the pinned shape: a thief zeroing
readings looks intermittent) are listed for a person with the shape pinned now, never applied.
It is run as the registry's owner (no service role may write ``raw.meters``; a dry run only
reads), and moves ``updated_at`` so the warehouse loads the change.

**Exporting a gateway's registry.** The agent learns which transformer each of its meters hangs
under, each customer's class and load shape and any meter's own time zone from its registry
file (``registry_path``, :mod:`edge_agent.registry`). Central's ``raw.meters`` is where those are
kept, and where a load shape is pinned (``python -m ml load-shapes`` proposes it). This writes
one gateway's file from there, with the keys the agent reads
(:data:`edge_agent.registry.REGISTRY_KEYS`), so a shape or a class pinned centrally reaches the
gateway the same way as its configuration: the file is copied to the gateway and the agent
restarted (it reads the registry at start).

Any login that may read ``raw.meters`` will do (the loader's or ml's). The file is written
whole or not at all (a temporary file renamed over it), and a gateway with no meter in the
registry is an error, not an empty file: an empty registry would quietly move every meter to the
global model and turn the energy balance off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from central.files import write_atomic
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

    @model_validator(mode="after")
    def _action_fits(self) -> ShapeProposal:
        """The action ``ml.load_shape.Proposal.action`` gives these shapes (a hand-edited
        row must not turn a review into a pin)."""
        fits = {
            "set": self.pinned is None,
            "keep": self.pinned == self.decided,
            "review": self.pinned is not None and self.pinned != self.decided,
            "wait": True,
        }
        if not fits[self.action]:
            raise ValueError(f"action {self.action!r} does not fit pinned {self.pinned!r}")
        return self


_PROPOSALS = TypeAdapter(list[ShapeProposal])


def read_proposals(path: Path) -> list[ShapeProposal]:
    """The proposals file, checked whole: ValueError names what is wrong and where. At most
    :data:`MAX_PROPOSALS_BYTES` are read (a device or a pipe has no size to check first)."""
    with path.open("rb") as f:
        data = f.read(MAX_PROPOSALS_BYTES + 1)
    if len(data) > MAX_PROPOSALS_BYTES:
        raise ValueError(f"{path}: more than {MAX_PROPOSALS_BYTES} bytes")
    try:
        proposals = _PROPOSALS.validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"{path}: {exc.error_count()} error(s); first at {where or 'top'}: {first['msg']}"
        ) from None
    seen: set[str] = set()
    for i, p in enumerate(proposals):
        if p.meter_id in seen:
            raise ValueError(f"{path}: meter {p.meter_id!r} proposed twice (row {i})")
        seen.add(p.meter_id)
    return proposals


@dataclass
class Pinned:
    """What :func:`pin_shapes` did (or would do)."""

    pinned: list[tuple[str, str]] = field(default_factory=list)  # (meter_id, shape)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (meter_id, why)
    #: (proposal, the shape pinned in raw.meters now)
    review: list[tuple[ShapeProposal, str | None]] = field(default_factory=list)


def pin_shapes(dsn: str, proposals: Sequence[ShapeProposal], *, dry_run: bool = False) -> Pinned:
    """Pin the ``set`` proposals' shapes in ``raw.meters``, in one transaction, for registered
    customer meters with no shape pinned. ``dry_run`` reads only (a role that may read
    ``raw.meters`` can run it) and says what would be pinned."""
    out = Pinned()
    ids = sorted(p.meter_id for p in proposals if p.action in ("set", "review"))
    lock = "" if dry_run else " for update"  # no pin slips in between the read and the write
    with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
        rows = conn.execute(
            "select meter_id, meter_role, load_shape from raw.meters"
            f" where meter_id = any(%s){lock}",
            (ids,),
        ).fetchall()
        now = {str(m): (str(role), shape) for m, role, shape in rows}
        for p in sorted(proposals, key=lambda p: p.meter_id):
            role, shape = now.get(p.meter_id, (None, None))
            if p.action == "review":
                out.review.append((p, shape))
            elif p.action != "set":
                continue
            elif role is None:
                out.skipped.append((p.meter_id, "not registered"))
            elif role != "customer":
                out.skipped.append((p.meter_id, f"a {role} meter"))
            elif shape is not None:
                out.skipped.append((p.meter_id, f"{shape} is pinned already"))
            else:
                out.pinned.append((p.meter_id, p.decided))
        if out.pinned and not dry_run:
            with conn.cursor() as cur:
                cur.executemany(
                    "update raw.meters set load_shape = %s, updated_at = now() where meter_id = %s",
                    [(shape, meter_id) for meter_id, shape in out.pinned],
                )
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
    """Write ``registry`` as JSON to ``path`` whole or not at all (its directory made first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(registry, indent=1) + "\n")
