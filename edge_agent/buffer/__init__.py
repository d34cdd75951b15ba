"""The durable store-and-forward buffer of a gateway: one SQLite file in WAL mode.

:class:`Buffer` opens the file and builds its parts over one connection, each keeping one thing:
``readings`` (intake and history), ``batches`` (the send queue), ``quarantine``, ``alerts`` (the
outbox), ``models``, ``profiles`` (each meter's long memory), ``spool`` (the spool directory's
ledger) and ``maintenance`` (pruning, figures); ``db`` holds the connection, transactions, meta
values and counters. Callers take the part they need; none of them writes SQL.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.buffer.batches import Batch, BatchQueue
from edge_agent.buffer.db import BufferDB, BufferFull, Counters, DiskFull, FileSpace, Meta, is_full
from edge_agent.buffer.maintenance import BufferStats, Maintenance
from edge_agent.buffer.models import ModelStore, StoredModel
from edge_agent.buffer.outbox import AlertRecord, AlertStore, OutboxAlert
from edge_agent.buffer.profiles import ProfileStore
from edge_agent.buffer.quarantine import QuarantineStore
from edge_agent.buffer.readings import AcceptResult, ReadingStore, TxWrite
from edge_agent.buffer.spool_ledger import SpoolFile, SpoolLedger


class Buffer:
    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        cap: int = 2_000_000,
        cap_policy: str = "refuse",
    ) -> None:
        self.db = BufferDB(path, synchronous=synchronous)
        self.quarantine = QuarantineStore(self.db)
        self.alerts = AlertStore(self.db)
        self.readings = ReadingStore(
            self.db, self.quarantine, self.alerts, cap=cap, cap_policy=cap_policy
        )
        self.batches = BatchQueue(self.db, self.readings, self.quarantine)
        self.models = ModelStore(self.db)
        self.profiles = ProfileStore(self.db)
        self.spool = SpoolLedger(self.db)
        self.maintenance = Maintenance(
            self.db, self.readings, self.batches, self.quarantine, self.alerts
        )

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def counters(self) -> Counters:
        return self.db.counters

    @property
    def meta(self) -> Meta:
        return self.db.meta

    def close(self) -> None:
        self.db.close()


__all__ = [
    "AcceptResult",
    "AlertRecord",
    "AlertStore",
    "Batch",
    "BatchQueue",
    "Buffer",
    "BufferDB",
    "BufferFull",
    "BufferStats",
    "Counters",
    "DiskFull",
    "FileSpace",
    "Maintenance",
    "Meta",
    "ModelStore",
    "OutboxAlert",
    "ProfileStore",
    "QuarantineStore",
    "ReadingStore",
    "SpoolFile",
    "SpoolLedger",
    "StoredModel",
    "TxWrite",
    "is_full",
]
