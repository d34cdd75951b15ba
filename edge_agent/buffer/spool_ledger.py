"""The spool directory's ledger: which files (by sha256) were taken, how far, with what outcome.

A file is taken a slice at a time; each slice's ledger row is written in the same transaction
as the slice's readings (``ReadingStore.accept(also=...)``), so a power cut mid-file resumes
after the last committed slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge_agent.buffer.db import BufferDB

Outcome = Literal["partial", "done", "failed"]


@dataclass(frozen=True)
class SpoolFile:
    outcome: str
    records_done: int
    readings: int
    quarantined: int


class SpoolLedger:
    def __init__(self, db: BufferDB) -> None:
        self._db = db

    def get(self, sha256: str) -> SpoolFile | None:
        row = self._db.conn.execute(
            "select outcome, records_done, readings, quarantined from spool_files where sha256 = ?",
            (sha256,),
        ).fetchone()
        return (
            None if row is None else SpoolFile(str(row[0]), int(row[1]), int(row[2]), int(row[3]))
        )

    def record(
        self, sha256: str, name: str, now: float, outcome: Outcome, records_done: int
    ) -> None:
        """The file's progress (inside the transaction that commits its slice)."""
        self._db.conn.execute(
            "insert into spool_files (sha256, name, processed_at, readings, quarantined, outcome,"
            " records_done) values (?, ?, ?, 0, 0, ?, ?) on conflict (sha256) do update set"
            " processed_at = excluded.processed_at, outcome = excluded.outcome,"
            " records_done = excluded.records_done",
            (sha256, name, now, outcome, records_done),
        )

    def add_totals(self, sha256: str, readings: int, quarantined: int) -> None:
        """Informational totals, written after the slice's commit (a power cut between the two
        under-counts them; the records themselves are safe)."""
        self._db.conn.execute(
            "update spool_files set readings = readings + ?, quarantined = quarantined + ?"
            " where sha256 = ?",
            (readings, quarantined, sha256),
        )
