"""The gateway's quarantine: input that could not become a reading, kept with its reason until a
batch carried it to central and central acknowledged that batch."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent import wire
from edge_agent.buffer.db import BufferDB

# A batch carries at most this much quarantine text (central refuses huge messages).
MAX_BATCH_QUARANTINE_CHARS = 4_000_000

QuarantineRow = tuple[str, str, float, str]  # raw, reason, received_at (epoch s), source


class QuarantineStore:
    def __init__(self, db: BufferDB) -> None:
        self._db = db

    def add(self, records: Sequence[wire.QuarantineRecord]) -> None:
        """Insert records (inside the caller's transaction)."""
        self._db.conn.executemany(
            "insert into quarantine (raw, reason, received_at, source) values (?, ?, ?, ?)",
            [(q.raw, q.reason, q.received_at.timestamp(), q.source) for q in records],
        )

    def unbatched(self) -> tuple[int, float | None]:
        """(records not in a batch, when the oldest of them was received)."""
        n, oldest = self._db.conn.execute(
            "select count(*), min(received_at) from quarantine where batch_id is null"
        ).fetchone()
        return int(n), oldest

    def take_for_batch(self, batch_id: str, limit: int) -> list[QuarantineRow]:
        """Assign the oldest unbatched records (at most ``limit``, and at most
        ``MAX_BATCH_QUARANTINE_CHARS`` of raw text) to ``batch_id`` (inside the caller's
        transaction); return them."""
        rows = self._db.conn.execute(
            "select id, raw, reason, received_at, source from quarantine "
            "where batch_id is null order by id limit ?",
            (limit,),
        ).fetchall()
        size = 0
        for i, q in enumerate(rows):  # bounded in bytes too: the rest waits for the next
            size += len(q[1])
            if i and size > MAX_BATCH_QUARANTINE_CHARS:
                rows = rows[:i]
                break
        if rows:
            self._db.conn.execute(
                "update quarantine set batch_id = ? where batch_id is null and id between ? and ?",
                (batch_id, rows[0][0], rows[-1][0]),
            )
        return [(str(raw), str(reason), float(at), str(src)) for _, raw, reason, at, src in rows]

    def requeue(self, batch_id: str) -> None:
        """The records of a batch central did not take go out again in a later batch."""
        self._db.conn.execute(
            "update quarantine set batch_id = null where batch_id = ?", (batch_id,)
        )

    def prune_acknowledged(self) -> None:
        """Drop the records whose batch central acknowledged (inside the caller's transaction;
        before those batches are pruned: records are found through their batch)."""
        self._db.conn.execute(
            "delete from quarantine where batch_id in "
            "(select batch_id from batches where acked_at is not null)"
        )
