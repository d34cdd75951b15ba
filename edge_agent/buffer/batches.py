"""The batch queue: readings and quarantine records frozen into ``readings.v1|v2`` batches.

A batch's payload is encoded once, when the batch is formed, and stored with it: a resend
carries the same ``batch_id`` and the same bytes, also after a restart. Batch ids are
``<incarnation>-<seq>``: the incarnation is random per buffer file, the seq only grows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from edge_agent import wire
from edge_agent.buffer.db import BufferDB
from edge_agent.buffer.quarantine import QuarantineStore
from edge_agent.buffer.readings import ReadingStore

log = logging.getLogger(__name__)
#: The reason central gives for a batch id it stored with other content.
BATCH_CONFLICT = "batch_conflict"


@dataclass(frozen=True)
class Batch:
    batch_id: str
    seq: int
    payload: bytes
    readings: int
    quarantined: int
    send_count: int
    last_sent_at: float | None


class BatchQueue:
    def __init__(self, db: BufferDB, readings: ReadingStore, quarantine: QuarantineStore) -> None:
        self._db = db
        self._readings = readings
        self._quarantine = quarantine

    def unbatched(self, limit: int) -> tuple[int, float | None]:
        """(readings + quarantine records not in a batch, readings counted up to ``limit``;
        when the oldest of them arrived). Bounded work, whatever the backlog."""
        n, oldest_reading = self._readings.unbatched(limit)
        q, oldest_record = self._quarantine.unbatched()
        oldest = [v for v in (oldest_reading, oldest_record) if v is not None]
        return n + q, (min(oldest) if oldest else None)

    def form(
        self,
        gateway_id: str,
        max_readings: int,
        now: float,
        compress: bool,
        schema: str = "readings.v2",
    ) -> Batch | None:
        """Freeze the oldest unbatched readings (and quarantine records) into a new batch."""
        with self._db.transaction() as conn:
            seq = self._db.meta.get_int("batch_seq") + 1
            batch_id = f"{self._db.incarnation}-{seq:08d}"
            taken = self._readings.take_for_batch(batch_id, max_readings)
            records = self._quarantine.take_for_batch(batch_id, max_readings)
            if not taken.rows and not records:
                return None
            payload = wire.readings_payload(
                schema,
                gateway_id=gateway_id,
                batch_id=batch_id,
                batch_seq=seq,
                sent_at=now,
                rows=taken.rows,
                quarantined=records,
                presorted=True,
            )
            body = wire.encode(payload, compress=compress)
            conn.execute(
                "insert into batches (batch_id, seq, created_at, payload, first_seq, last_seq, "
                "readings, quarantined, payload_sha256) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    seq,
                    now,
                    body,
                    taken.first_seq,
                    taken.last_seq,
                    len(taken.rows),
                    len(records),
                    hashlib.sha256(body).hexdigest(),
                ),
            )
            self._db.meta.set("batch_seq", seq)
            self._db.counters.add({"batches_formed": 1})
        return Batch(batch_id, seq, body, len(taken.rows), len(records), 0, None)

    def open(self) -> list[Batch]:
        """Batches formed and not yet answered by central, oldest first (payload not loaded)."""
        return [
            Batch(row[0], row[1], b"", *row[2:])
            for row in self._db.conn.execute(
                "select batch_id, seq, readings, quarantined, send_count, last_sent_at "
                "from batches where acked_at is null order by seq"
            )
        ]

    def payload(self, batch_id: str) -> bytes:
        row = self._db.conn.execute(
            "select payload from batches where batch_id = ?", (batch_id,)
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else b""

    def mark_sent(self, batch_id: str, now: float, wire_bytes: int, resend: bool = False) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "update batches set send_count = send_count + 1, last_sent_at = ?, "
                "first_sent_at = coalesce(first_sent_at, ?) where batch_id = ?",
                (now, now, batch_id),
            )
            self._db.counters.add(
                {"batches_sent": 1, "wire_bytes_sent": wire_bytes, "batches_resent": int(resend)}
            )

    def apply_ack(self, ack: wire.Ack, now: float) -> bool:
        """Record central's answer. Returns False for an ack that is not applied: of an unknown
        or answered batch, or naming other bytes than the batch's (``ack.v2``)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "select first_seq, last_seq, payload_sha256 from batches "
                "where batch_id = ? and acked_at is null",
                (ack.batch_id,),
            ).fetchone()
            if row is None:
                self._db.counters.add({"acks_ignored": 1})
                return False
            if ack.batch_sha256 is not None and row[2] is not None and ack.batch_sha256 != row[2]:
                log.error("ack for batch %s names other bytes: not applied", ack.batch_id)
                self._db.counters.add({"acks_digest_mismatch": 1})
                return False
            if ack.status == "rejected" and (ack.reason or "").startswith(BATCH_CONFLICT):
                self._requeue(ack, row[0], row[1], now)
                return True
            conn.execute(
                "update batches set acked_at = ?, ack_status = ?, ack_json = ?, payload = null "
                "where batch_id = ?",
                (now, ack.status, ack.model_dump_json(by_alias=True), ack.batch_id),
            )
            n = self._readings.acknowledge(row[0], row[1], now)
            self._db.meta.set("last_ack_at", now)
            if ack.status == "stored":
                self._db.counters.add({"batches_acked": 1, "readings_acked": n})
            else:
                # Central keeps a rejected batch whole in its quarantine: nothing is lost, but
                # somebody must look. The counter and status.v1 make it visible.
                self._db.counters.add({"batches_rejected": 1, "readings_rejected": n})
        return True

    def _requeue(
        self, ack: wire.Ack, first_seq: int | None, last_seq: int | None, now: float
    ) -> None:
        """Central stored this batch id with other content (this buffer went back in time: a
        restored or stale copy). Inside the caller's transaction: the batch is closed, its
        readings and quarantine records are queued again, and the buffer starts a new
        incarnation, so no id it forms from now on can repeat one central knows."""
        self._db.conn.execute(
            "update batches set acked_at = ?, ack_status = 'conflict', ack_json = ?, "
            "payload = null where batch_id = ?",
            (now, ack.model_dump_json(by_alias=True), ack.batch_id),
        )
        requeued = self._readings.requeue(first_seq, last_seq)
        self._quarantine.requeue(ack.batch_id)
        counters = {"batches_id_conflict": 1, "readings_requeued": requeued}
        incarnation = self._db.incarnation
        if ack.batch_id.startswith(incarnation + "-"):  # an older one has been left already
            incarnation = self._db.new_incarnation()
            counters["incarnations"] = 1
        self._db.counters.add(counters)
        log.error(
            "central stored batch %s with other content: %d readings queued again under "
            "incarnation %s",
            ack.batch_id,
            requeued,
            incarnation,
        )

    def open_count(self) -> int:
        return int(
            self._db.conn.execute("select count(*) from batches where acked_at is null").fetchone()[
                0
            ]
        )

    def lowest_open_seq(self) -> int | None:
        """The first reading seq of the oldest open batch (None: no open batch holds one)."""
        value = self._db.conn.execute(
            "select min(first_seq) from batches where acked_at is null"
        ).fetchone()[0]
        return None if value is None else int(value)

    def prune_acknowledged(self, below_seq: int) -> None:
        """Drop acknowledged batches whose readings are all gone (caller's transaction)."""
        self._db.conn.execute(
            "delete from batches where acked_at is not null and (last_seq is null or last_seq < ?)",
            (below_seq,),
        )
