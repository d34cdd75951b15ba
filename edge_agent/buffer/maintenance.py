"""Housekeeping over every part of the buffer: pruning and the figures of ``status``."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.buffer.batches import BatchQueue
from edge_agent.buffer.db import BufferDB
from edge_agent.buffer.outbox import AlertStore
from edge_agent.buffer.quarantine import QuarantineStore
from edge_agent.buffer.readings import ReadingStore


@dataclass(frozen=True)
class BufferStats:
    pending_readings: int  # not yet acknowledged by central (in a batch or not)
    unbatched_readings: int
    inflight_batches: int
    total_readings: int
    oldest_pending_ts: int | None
    oldest_unbatched_accepted_at: float | None
    last_ack_at: float | None


class Maintenance:
    def __init__(
        self,
        db: BufferDB,
        readings: ReadingStore,
        batches: BatchQueue,
        quarantine: QuarantineStore,
        alerts: AlertStore,
    ) -> None:
        self._db = db
        self._readings = readings
        self._batches = batches
        self._quarantine = quarantine
        self._alerts = alerts

    def prune(self, retention_s: int, now: float | None = None) -> int:
        """Delete what central acknowledged and the detector no longer needs: readings (and
        delivered alerts) older than ``retention_s`` before the newest reading (or before
        ``now``, the wall clock, when that is earlier: one reading stamped far in the future
        must not take the history with it), quarantine records and batches once acknowledged.
        Returns the readings deleted."""
        newest = self._readings.newest_ts()
        if newest is None:
            return 0
        if now is not None:
            newest = min(newest, int(now))
        with self._db.transaction():
            n = self._readings.prune_acknowledged(newest - retention_s)
            self._quarantine.prune_acknowledged()
            self._batches.prune_acknowledged(self._readings.lowest_seq())
            self._alerts.prune_delivered(newest - retention_s)
            self._db.counters.add({"readings_pruned": n})
        return n

    def prune_for_room(self, target_bytes: int, chunk: int = 5_000) -> int:
        """Delete acknowledged readings, oldest first, until the buffer's data is under
        ``target_bytes`` or none is left: when the history window holds more than the byte
        budget, the history shrinks rather than intake staying paused for ever. Returns the
        readings deleted."""
        deleted = 0
        while self._db.space().used_bytes > target_bytes:
            with self._db.transaction():
                n = self._db.conn.execute(
                    "delete from readings where seq in (select seq from readings "
                    "where acked_at is not null order by ts limit ?)",
                    (chunk,),
                ).rowcount
                self._db.counters.add({"readings_pruned_for_room": n})
            if n == 0:
                break
            deleted += n
        return deleted

    def stats(self) -> BufferStats:
        r = self._readings
        # Unacknowledged readings are in open batches or not batched yet: start the scan at the
        # lowest such seq instead of walking every acknowledged reading of the retention window.
        lo = self._batches.lowest_open_seq()
        floor = r.batched_upto + 1 if lo is None else min(lo, r.batched_upto + 1)
        unbatched, oldest_accepted = r.unbatched_total()
        last_ack = self._db.meta.get("last_ack_at")
        return BufferStats(
            pending_readings=r.pending,
            unbatched_readings=unbatched,
            inflight_batches=self._batches.open_count(),
            total_readings=r.count(),
            oldest_pending_ts=r.oldest_pending_ts(floor),
            oldest_unbatched_accepted_at=oldest_accepted,
            last_ack_at=float(last_ack) if last_ack else None,
        )
