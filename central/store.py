"""Storing one readings batch in PostgreSQL: one transaction, exactly once in effect.

Order inside the transaction (``docs/contracts.md``, delivery guarantee):

1. claim the batch in the ledger (``raw.ingest_batches``) with the digest of its message; a
   batch id already there with the same digest is a replay and gets the ack sent the first time
   (the insert waits on a concurrent worker that holds the same batch, so two workers never both
   store it); with another digest it is a **batch conflict**: quarantined whole, answered
   ``rejected`` (reason ``batch_conflict``), never acknowledged as stored;
2. readings of meters registered to another gateway go to quarantine (``meter_of_other_gateway``);
3. COPY the valid readings into a temporary table, then ``INSERT … ON CONFLICT DO NOTHING``;
4. readings not inserted are duplicates (same values) or conflicts (other values → quarantine);
5. invalid or implausible readings and the agent's own quarantine records → ``raw.quarantine``;
6. the ledger row gets its counts and the ack; commit. The caller publishes the ack afterwards.

Every ack is ``ack.v2``, carrying the sha256 of the message it answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter, ValidationError

from central.rows import COPY_TYPES, reading_row, row_json, validated_rows
from edge_agent import wire
from edge_agent.fields import METER_ID, N_MEASURED, READING_NAMES, TS, Row
from edge_agent.vocabulary import quarantine_reason

_COLUMNS = ", ".join(READING_NAMES)
_MEASURED = ", ".join(f"r.{c}" for c in READING_NAMES[:N_MEASURED])
_reading = TypeAdapter(wire.Reading)
_readings = TypeAdapter(list[wire.Reading])
_record = TypeAdapter(wire.QuarantineRecord)
QuarantineRow = tuple[str, str, datetime, str]  # raw, reason, received_at, source


@dataclass
class Outcome:
    ack: wire.Ack | None  # None when no ack can be addressed (no batch id could be read)
    replay: bool = False
    conflict: bool = False  # a known batch id with other content


@dataclass
class AlertOutcome:
    """The answer to an alert message (stored, or quarantined with the reason)."""

    ack: wire.AlertAck


@dataclass
class BadMessage:
    """A message quarantined whole, before any batch could be read from it; the batch or
    alert id it names, when one could be read, addresses the rejecting answer."""

    reason: str
    batch_id: str | None = None
    alert_id: str | None = None


@dataclass(frozen=True)
class Window:
    """When a reading may end, as central judges it on arrival: not before ``earliest`` (the
    fleet's first day), not more than ``max_future_s`` after central's own clock."""

    earliest: datetime = datetime(2010, 1, 1, tzinfo=UTC)
    max_future_s: int = 600

    def problem(self, ts: datetime, received: datetime) -> str | None:
        if ts > received + timedelta(seconds=self.max_future_s):
            return quarantine_reason(
                "ts_in_future", f"{wire.iso_z(ts)} is after central's clock + {self.max_future_s}s"
            )
        if ts < self.earliest:
            return quarantine_reason(
                "ts_too_old", f"{wire.iso_z(ts)} is before {wire.iso_z(self.earliest)}"
            )
        return None


@dataclass(frozen=True)
class QuarantinePolicy:
    """How much of a message quarantined whole is kept: its bytes when small (a rejected batch
    can then be recovered), else an excerpt, its size and its digest."""

    payload_max_bytes: int = 1024 * 1024
    excerpt_chars: int = wire.MAX_RAW_CHARS

    def cost(self, size: int) -> int:
        """Bytes a message of ``size`` bytes adds to the quarantine under this policy."""
        return min(size, self.excerpt_chars) + (size if size <= self.payload_max_bytes else 0)


#: Only the reason, size and digest of a message: what a gateway over its budget gets.
BARE = QuarantinePolicy(payload_max_bytes=-1, excerpt_chars=0)


def _always(size: int) -> bool:
    return True


def _now() -> datetime:
    return datetime.now(UTC)


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _quarantine_message(
    conn: psycopg.Connection,
    payload: bytes,
    reason: str,
    source: str,
    gateway_id: str | None,
    batch_id: str | None,
    policy: QuarantinePolicy,
) -> bool:
    """Store a whole bad message once (keyed by its digest). True if it was new."""
    excerpt = payload[: policy.excerpt_chars].decode("utf-8", errors="backslashreplace")
    raw = wire.printable(excerpt)[: policy.excerpt_chars]
    keep = bytes(payload) if len(payload) <= policy.payload_max_bytes else None
    cur = conn.execute(
        "insert into raw.quarantine (raw, reason, received_at, source, gateway_id, batch_id, "
        "payload_sha256, payload, payload_size) values (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "on conflict do nothing",
        (
            raw,
            wire.printable(reason)[:500],
            _now(),
            source,
            gateway_id,
            batch_id,
            digest(payload),
            keep,
            len(payload),
        ),
    )
    return cur.rowcount == 1


def reject(
    conn: psycopg.Connection,
    payload: bytes,
    bad: BadMessage,
    topic: str,
    gateway_id: str | None,
    policy: QuarantinePolicy = QuarantinePolicy(),
) -> Outcome:
    """Quarantine a message whole; answer ``rejected`` when it names a batch we can address."""
    with conn.transaction():
        _quarantine_message(
            conn, payload, bad.reason, f"mqtt:{topic}", gateway_id, bad.batch_id, policy
        )
        if bad.batch_id is None or gateway_id is None:
            return Outcome(None)
        ack = wire.Ack(
            batch_id=bad.batch_id,
            status="rejected",
            reason=bad.reason[:200],
            batch_sha256=digest(payload),
        )
        conn.execute(
            "insert into raw.ingest_batches (gateway_id, batch_id, batch_seq, sent_at, readings, "
            "inserted, duplicates, conflicts, quarantined, status, ack, payload_sha256) "
            "values (%s, %s, -1, %s, 0, 0, 0, 0, 1, 'rejected', %s, %s) on conflict do nothing",
            (gateway_id, bad.batch_id, _now(), Jsonb(ack.to_json_dict()), digest(payload)),
        )
    return Outcome(ack)


@dataclass
class Prepared:
    """A batch decoded and validated, ready to store (built off the database's critical path)."""

    env: wire.BatchEnvelope
    rows: list[Row]
    quarantine: list[QuarantineRow]
    source: str
    received: datetime
    payload: bytes = b""
    sha256: str = field(default="")


def prepare(
    env: wire.BatchEnvelope, source: str, payload: bytes = b"", window: Window = Window()
) -> Prepared:
    """Validate each reading and quarantine record of an envelope-valid batch (no I/O).
    ``payload``: the message as received (its digest names the batch's content); without it,
    the envelope's canonical JSON stands for it."""
    if not payload:
        payload = json.dumps(
            env.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        ).encode()
    received = _now()
    rows = None
    if env.columns is not None and env.n is not None:
        rows = validated_rows(env.n, env.columns)  # the fast path: everything valid
    if rows is not None:
        quarantine: list[QuarantineRow] = []
    else:
        rows, quarantine = _validate(env.reading_items(), received, source)
    rows = _in_window(rows, quarantine, window, received, source)
    for item in env.quarantined:
        try:
            q = _record.validate_python(item)
            quarantine.append((q.raw, q.reason, q.received_at, q.source))
        except ValidationError as exc:
            quarantine.append(
                (
                    _raw(item),
                    quarantine_reason("invalid_quarantine_record", wire.explain(exc)),
                    received,
                    source,
                )
            )
    return Prepared(env, rows, quarantine, source, received, payload, digest(payload))


def _in_window(
    rows: list[Row],
    quarantine: list[QuarantineRow],
    window: Window,
    received: datetime,
    source: str,
) -> list[Row]:
    """The rows whose time is plausible; the others go to ``quarantine`` with the reason."""
    latest = received + timedelta(seconds=window.max_future_s)
    if all(window.earliest <= r[TS] <= latest for r in rows):
        return rows
    kept: list[Row] = []
    for r in rows:
        problem = window.problem(r[TS], received)
        if problem is None:
            kept.append(r)
        else:
            quarantine.append((row_json(r), problem, received, source))
    return kept


def store_batch(
    conn: psycopg.Connection,
    batch: Prepared | wire.BatchEnvelope,
    source: str = "",
    policy: QuarantinePolicy = QuarantinePolicy(),
    afford: Callable[[int], bool] = _always,
) -> Outcome:
    """Store a batch in one transaction and return its ack (the stored one for a replay)."""
    p = batch if isinstance(batch, Prepared) else prepare(batch, source)
    env = p.env
    with conn.transaction():
        claimed = conn.execute(
            "insert into raw.ingest_batches (gateway_id, batch_id, batch_seq, sent_at, readings, "
            "inserted, duplicates, conflicts, quarantined, status, ack, payload_sha256) "
            "values (%s, %s, %s, %s, %s, 0, 0, 0, 0, 'stored', '{}', %s) "
            "on conflict do nothing returning 1",
            (env.gateway_id, env.batch_id, env.batch_seq, env.sent_at, env.size, p.sha256),
        ).fetchone()
        if claimed is None:
            row = conn.execute(
                "select ack, payload_sha256 from raw.ingest_batches "
                "where gateway_id = %s and batch_id = %s",
                (env.gateway_id, env.batch_id),
            ).fetchone()
            assert row is not None
            # A batch stored before digests were kept (row[1] null) cannot be compared: taken as
            # a conflict, so the agent sends its readings again under new ids (duplicates at
            # worst), never as a replay that could hide other content.
            if row[1] is not None and row[1] == p.sha256:
                return Outcome(wire.Ack.model_validate(row[0]), replay=True)
            if not afford(policy.cost(len(p.payload))):
                policy = BARE
            return _batch_conflict(conn, p, row[1], policy)
        quarantine = list(p.quarantine)
        received = p.received
        rows = _owned(conn, p.rows, quarantine, env.gateway_id, received, p.source)
        inserted, duplicates, conflicts = _insert_readings(conn, rows, env, received, p.source)
        quarantine.extend(conflicts)
        if quarantine:
            with conn.cursor().copy(
                "copy raw.quarantine (raw, reason, received_at, source, gateway_id, batch_id) "
                "from stdin"
            ) as copy:
                for q_row in quarantine:
                    copy.write_row((*q_row, env.gateway_id, env.batch_id))
        ack = wire.Ack(
            batch_id=env.batch_id,
            status="stored",
            inserted=inserted,
            duplicates=duplicates,
            conflicts=len(conflicts),
            quarantined=len(quarantine),
            batch_sha256=p.sha256,
        )
        conn.execute(
            "update raw.ingest_batches set inserted = %s, duplicates = %s, conflicts = %s, "
            "quarantined = %s, ack = %s where gateway_id = %s and batch_id = %s",
            (
                inserted,
                duplicates,
                len(conflicts),
                len(quarantine),
                Jsonb(ack.to_json_dict()),
                env.gateway_id,
                env.batch_id,
            ),
        )
    return Outcome(ack)


def _batch_conflict(
    conn: psycopg.Connection, p: Prepared, stored_sha256: str | None, policy: QuarantinePolicy
) -> Outcome:
    """A batch id already stored with other content: never acknowledged as stored. The message
    goes to quarantine whole (once per digest) and the agent gets a rejecting ack that names it
    (it then sends these readings again under new ids)."""
    env = p.env
    stored = f"sha256 {stored_sha256[:16]}..." if stored_sha256 else "no digest kept"
    reason = quarantine_reason(
        "batch_conflict",
        f"batch {env.batch_id} of {env.gateway_id} was stored with other content ({stored})",
    )
    _quarantine_message(conn, p.payload, reason, p.source, env.gateway_id, env.batch_id, policy)
    ack = wire.Ack(
        batch_id=env.batch_id, status="rejected", reason=reason[:200], batch_sha256=p.sha256
    )
    return Outcome(ack, conflict=True)


def _owned(
    conn: psycopg.Connection,
    rows: list[Row],
    quarantine: list[QuarantineRow],
    gateway_id: str,
    received: datetime,
    source: str,
) -> list[Row]:
    """The rows of meters this gateway may report: a meter registered to another gateway is
    reported by that one only (a gateway cannot take another's slots first)."""
    if not rows:
        return rows
    meters = sorted({r[METER_ID] for r in rows})
    others: dict[str, str] = {
        str(m): str(g)
        for m, g in conn.execute(
            "select meter_id, gateway_id from raw.meters where meter_id = any(%s) "
            "and gateway_id is not null and gateway_id <> %s",
            (meters, gateway_id),
        )
    }
    if not others:
        return rows
    kept: list[Row] = []
    for r in rows:
        owner = others.get(r[METER_ID])
        if owner is None:
            kept.append(r)
        else:
            reason = quarantine_reason(
                "meter_of_other_gateway", f"{r[METER_ID]} is read by {owner}"
            )
            quarantine.append((row_json(r), reason, received, source))
    return kept


def _validate(
    items: list[Any], received: datetime, source: str
) -> tuple[list[Row], list[QuarantineRow]]:
    """Valid readings as rows, invalid ones as quarantine rows. The whole list is validated in
    one call (the fast path); only a list with bad items is gone through one by one."""
    try:
        return [reading_row(r) for r in _readings.validate_python(items)], []
    except ValidationError:
        pass
    rows: list[Row] = []
    quarantine: list[QuarantineRow] = []
    for item in items:
        try:
            rows.append(reading_row(_reading.validate_python(item)))
        except ValidationError as exc:
            quarantine.append(
                (_raw(item), quarantine_reason("invalid", wire.explain(exc)), received, source)
            )
    return rows, quarantine


def _insert_readings(
    conn: psycopg.Connection,
    rows: list[Row],
    env: wire.BatchEnvelope,
    received: datetime,
    source: str,
) -> tuple[int, int, list[QuarantineRow]]:
    if not rows:
        return 0, 0, []
    conn.execute(
        "create temp table if not exists incoming (like raw.readings including defaults) "
        "on commit delete rows"
    )
    with conn.cursor().copy(
        f"copy incoming ({_COLUMNS}, gateway_id, batch_id) from stdin (format binary)"
    ) as copy:
        copy.set_types(list(COPY_TYPES))
        for row in rows:
            copy.write_row((*row, env.gateway_id, env.batch_id))
    # received_at = now(), the transaction's start: the warehouse loader reads rows up to the
    # start of the oldest open transaction, so no committed row can land behind its watermark.
    inserted = conn.execute(
        f"insert into raw.readings ({_COLUMNS}, gateway_id, batch_id, received_at) "
        f"select {_COLUMNS}, gateway_id, batch_id, now() from incoming "
        f"on conflict (meter_id, ts) do nothing",
    ).rowcount
    if inserted == len(rows):
        return inserted, 0, []
    # Some keys were there before this batch, or twice in it: judge each newcomer by its values.
    # (The temp table was never analysed: without this the planner may scan raw.readings.)
    conn.execute("analyze incoming")
    # Of a key repeated in this batch, the first occurrence is the one stored (``mine``).
    stored = {
        (r[1 + METER_ID], r[1 + TS]): (r[0], r[1:])
        for r in conn.execute(
            f"select (r.gateway_id = %s and r.batch_id = %s), {_MEASURED} from raw.readings r "
            f"where (r.meter_id, r.ts) in (select meter_id, ts from incoming)",
            (env.gateway_id, env.batch_id),
        )
    }
    duplicates = 0
    conflicts: list[QuarantineRow] = []
    seen: set[tuple[str, datetime]] = set()
    for row in rows:
        key = (row[METER_ID], row[TS])
        mine, values = stored[key]
        if mine and key not in seen:
            seen.add(key)
        elif tuple(values) == row[:N_MEASURED]:
            duplicates += 1
        else:
            conflicts.append(
                (
                    row_json(row),
                    "conflict: other values already stored for this meter and interval",
                    received,
                    source,
                )
            )
    return inserted, duplicates, conflicts


def _raw(item: Any) -> str:
    try:
        return json.dumps(item, separators=(",", ":"), default=str)[: wire.MAX_RAW_CHARS]
    except (TypeError, ValueError):
        return repr(item)[: wire.MAX_RAW_CHARS]


class ForeignMeter(ValueError):
    """An alert about a meter registered to another gateway."""


def store_alert(conn: psycopg.Connection, alert: wire.Alert) -> bool:
    """Store one ``alert.v1`` in ``raw.alerts``; True if new. Alert ids are deterministic (same
    reading and model, same id), so a resent alert is a no-op here; they are unique per gateway,
    so no gateway can pre-empt another's. Raises :class:`ForeignMeter` for a meter registered
    to another gateway (as its readings would be)."""
    with conn.transaction():
        owner = conn.execute(
            "select gateway_id from raw.meters where meter_id = %s "
            "and gateway_id is not null and gateway_id <> %s",
            (alert.meter_id, alert.gateway_id),
        ).fetchone()
        if owner is not None:
            raise ForeignMeter(
                quarantine_reason(
                    "meter_of_other_gateway", f"{alert.meter_id} is read by {owner[0]}"
                )
            )
        cur = conn.execute(
            "insert into raw.alerts (alert_id, gateway_id, meter_id, ts, kind, score, threshold, "
            "model_version, features, detail) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "on conflict (gateway_id, alert_id) do nothing",
            (
                alert.alert_id,
                alert.gateway_id,
                alert.meter_id,
                alert.ts,
                alert.kind,
                alert.score,
                alert.threshold,
                alert.model_version,
                Jsonb(alert.features),
                wire.printable(alert.detail) if alert.detail is not None else None,
            ),
        )
    return cur.rowcount == 1
