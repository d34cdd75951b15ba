"""Schema of the gateway buffer, versioned with ``PRAGMA user_version``.

Each migration is a function applied once, in order, inside one transaction with the version
bump, so a power cut mid-migration leaves the previous version intact. ``sqlite-utils`` creates
the tables, which keeps them readable with ``sqlite-utils rows buffer.db readings``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils


def _v1(db: sqlite_utils.Database) -> None:
    db.table("readings").create(
        {
            "seq": int,
            "meter_id": str,
            "ts": int,  # end of interval, epoch seconds UTC
            "interval_s": int,
            "kwh": float,
            "register_kwh": float,
            "voltage_v": float,
            "current_a": float,
            "power_factor": float,
            "temperature_c": float,
            "humidity_pct": float,
            "wind_ms": float,
            "supply_on": int,
            "flags": str,  # comma-separated meter events
            "score": float,
            "model_version": str,
            "accepted_at": float,  # wall clock, epoch seconds
            "accept_seq": int,  # which accept() call stored it
            "batch_id": str,  # null until frozen into a batch
            "acked_at": float,  # null until central acknowledged the batch
        },
        pk="seq",
        not_null={"meter_id", "ts", "interval_s", "kwh", "supply_on", "accepted_at"},
    )
    db.table("readings").create_index(["ts", "meter_id"], unique=True, index_name="readings_key")
    # No other index on readings: each one is paid on every insert of the hot path. Batches
    # take the oldest unbatched readings first, so batched readings are a prefix in seq order
    # and a batch is the seq range [first_seq, last_seq] of the batches table.
    db.table("quarantine").create(
        {
            "id": int,
            "raw": str,
            "reason": str,
            "received_at": float,
            "source": str,
            "batch_id": str,
        },
        pk="id",
        not_null={"raw", "reason", "received_at", "source"},
    )
    db.table("batches").create(
        {
            "batch_id": str,
            "seq": int,
            "created_at": float,
            "payload": bytes,  # frozen wire bytes; null once acked
            "first_seq": int,  # readings of this batch: seq in [first_seq, last_seq]
            "last_seq": int,
            "readings": int,
            "quarantined": int,
            "send_count": int,
            "first_sent_at": float,
            "last_sent_at": float,
            "acked_at": float,
            "ack_status": str,
            "ack_json": str,
        },
        pk="batch_id",
        not_null={"seq", "created_at", "readings", "quarantined", "send_count"},
        defaults={"send_count": 0},
    )
    db.execute("create index batches_open on batches (seq) where acked_at is null")
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null={"value"})
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("spool_files").create(
        {
            "sha256": str,
            "name": str,
            "processed_at": float,
            "readings": int,
            "quarantined": int,
            "outcome": str,
        },
        pk="sha256",
    )


def _v2(db: sqlite_utils.Database) -> None:
    """The alerts outbox and the accepted anomaly models."""
    # An alert is committed here in the same transaction as the reading it is about, then
    # published QoS1 until the broker's PUBACK; a restart re-publishes what was not acked.
    db.table("alerts").create(
        {
            "alert_id": str,  # deterministic: the same reading and model give the same id
            "kind": str,
            "meter_id": str,
            "ts": int,  # the reading's (or the energy-balance window's) end, epoch seconds
            "payload": str,  # the alert.v1 JSON, frozen when raised
            "created_at": float,
            "attempts": int,
            "last_sent_at": float,
            "acked_at": float,  # PUBACK received: the broker has it
        },
        pk="alert_id",
        not_null={"kind", "meter_id", "ts", "payload", "created_at", "attempts"},
        defaults={"attempts": 0},
    )
    db.execute("create index alerts_unacked on alerts (created_at) where acked_at is null")
    db.table("alerts").create_index(["meter_id", "kind", "ts"], index_name="alerts_meter")
    # Accepted model.v1 messages, newest last; the agent verifies the newest again at start
    # (the configured public key may have changed since).
    db.table("models").create(
        {
            "id": int,
            "name": str,
            "version": str,
            "created_at": str,
            "sha256": str,
            "message": str,  # the model.v1 JSON as received
            "accepted_at": float,
            "public_key_sha256": str,  # which key verified it
        },
        pk="id",
        not_null={"name", "version", "created_at", "sha256", "message", "accepted_at"},
    )


def _v3(db: sqlite_utils.Database) -> None:
    """Quarantine rows waiting for a batch are looked up on every sync tick."""
    db.execute("create index quarantine_unbatched on quarantine (id) where batch_id is null")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3]
LATEST = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("pragma user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the latest schema; idempotent. Returns the version reached.

    sqlite-utils is imported only when there is something to migrate: it is heavy to import
    and an up-to-date buffer (every start but the first) does not need it."""
    current = version(conn)
    if current > LATEST:
        raise RuntimeError(f"buffer schema v{current} is newer than this agent (v{LATEST})")
    if current == LATEST:
        return LATEST
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for number in range(current + 1, LATEST + 1):
        conn.execute("begin immediate")
        try:
            MIGRATIONS[number - 1](db)
            conn.execute(f"pragma user_version = {number}")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
    return LATEST
