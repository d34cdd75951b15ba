"""Readings in the gateway buffer: intake, the features' history, and the batching frontier.

Invariants (``docs/contracts.md``, delivery guarantee):

* a reading is committed here before its source is acknowledged;
* one ``(meter_id, ts)`` is stored once; the same key with other values goes to quarantine;
* readings are numbered by ``seq`` in the order they were accepted; batches take the oldest
  unbatched readings first, so batched readings are a prefix in seq order (below the
  ``batched_upto`` frontier) and a batch is a seq range;
* a reading leaves the buffer only after its batch was acknowledged and its history window has
  passed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent import wire
from edge_agent.buffer.db import BufferDB, BufferFull
from edge_agent.buffer.outbox import AlertRecord, AlertStore
from edge_agent.buffer.quarantine import QuarantineStore
from edge_agent.codec import measured_equal, row_to_wire
from edge_agent.fields import METER_ID, READING_COLUMNS, TS, Row
from edge_agent.vocabulary import quarantine_reason

_COLUMNS = ", ".join(READING_COLUMNS)
# seq is given explicitly, from a counter that only grows: SQLite would otherwise reuse
# max(seq) + 1 after the newest rows were pruned, behind the batched-up-to marker.
_INSERT = (
    f"insert or ignore into readings (seq, {_COLUMNS}, accepted_at, accept_seq) "
    f"values (?, {', '.join('?' * len(READING_COLUMNS))}, ?, ?)"
)
# History queries for at most this many meters go meter by meter (see ReadingStore.history).
HISTORY_BY_METER_MAX = 64

#: A write of the caller's own, run inside an accept's transaction (a spool file's ledger row).
TxWrite = Callable[[], None]


@dataclass(frozen=True)
class AcceptResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    evicted: int = 0
    alert_ids: tuple[str, ...] = ()  # alerts committed with these readings


@dataclass(frozen=True)
class BatchSlice:
    """The readings frozen into one batch: the seq range and the rows in (meter_id, ts) order."""

    first_seq: int | None
    last_seq: int | None
    rows: list[Row]


class ReadingStore:
    def __init__(
        self,
        db: BufferDB,
        quarantine: QuarantineStore,
        alerts: AlertStore,
        *,
        cap: int = 2_000_000,
        cap_policy: str = "refuse",
    ) -> None:
        self._db = db
        self._quarantine = quarantine
        self._alerts = alerts
        self.cap = cap
        self.cap_policy = cap_policy
        conn = db.conn
        self._pending = int(
            conn.execute("select count(*) from readings where acked_at is null").fetchone()[0]
        )
        self._accept_seq = db.meta.get_int("accept_seq")
        self._batched_upto = db.meta.get_int("batched_upto")
        top = int(conn.execute("select coalesce(max(seq), 0) from readings").fetchone()[0])
        self._next_seq = max(db.meta.get_int("next_seq"), top + 1, self._batched_upto + 1)

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged by central (in a batch or not)."""
        return self._pending

    @property
    def is_full(self) -> bool:
        return self._pending >= self.cap

    @property
    def batched_upto(self) -> int:
        """The highest seq frozen into a batch."""
        return self._batched_upto

    # --- intake ---------------------------------------------------------------------------

    def accept(
        self,
        rows: Sequence[Row],
        quarantine: Iterable[wire.QuarantineRecord] = (),
        *,
        now: float,
        meta: dict[str, object] | None = None,
        also: Sequence[TxWrite] = (),
        alerts: Sequence[AlertRecord] = (),
        counters: dict[str, int] | None = None,
    ) -> AcceptResult:
        """Commit validated readings and quarantine records in one transaction.

        ``meta`` (a source's progress marker) and the ``also`` writes (a spool file's ledger
        row) go into the same transaction, so a source that resumes from them after a power cut
        neither skips nor repeats anything. ``alerts`` about readings of this call go into the
        outbox in the same transaction, each only if its reading was stored now (not for a
        duplicate or a conflict). Raises :class:`BufferFull` without writing anything when the
        cap policy is ``refuse``."""
        quarantine = list(quarantine)
        evicted = 0
        overflow = self._pending + len(rows) - self.cap
        if overflow > 0 and rows and self.cap_policy == "refuse":
            with self._db.transaction():
                self._db.counters.add({"readings_refused_full": len(rows)})
            raise BufferFull(
                f"buffer holds {self._pending} unacknowledged readings (cap {self.cap})"
            )
        conn = self._db.conn
        with self._db.transaction():
            if overflow > 0 and rows:
                evicted = self._evict_oldest(overflow)
            seq = self._accept_seq + 1
            base = self._next_seq
            before = conn.total_changes
            conn.executemany(_INSERT, [(base + i, *r, now, seq) for i, r in enumerate(rows)])
            inserted = conn.total_changes - before
            self._db.meta.set("next_seq", base + len(rows))
            duplicates = conflicts = 0
            if inserted < len(rows):
                duplicates, conflict_records = self._sort_out_repeats(rows, seq, now)
                conflicts = len(conflict_records)
                quarantine.extend(conflict_records)
            if quarantine:
                self._quarantine.add(quarantine)
            self._db.meta.set("accept_seq", seq)
            for key, value in (meta or {}).items():
                self._db.meta.set(key, value)
            for write in also:
                write()
            alert_ids = self._alerts.add_for_readings(alerts, now, seq) if alerts else ()
            self._db.counters.add(
                {
                    "readings_accepted": inserted,
                    "readings_duplicate": duplicates,
                    "readings_conflict": conflicts,
                    "quarantined": len(quarantine),
                    "readings_evicted": evicted,
                    **(counters or {}),
                }
            )
        self._accept_seq = seq
        self._next_seq = base + len(rows)
        self._pending += inserted - evicted
        return AcceptResult(inserted, duplicates, conflicts, len(quarantine), evicted, alert_ids)

    def _sort_out_repeats(
        self, rows: Sequence[Row], seq: int, now: float
    ) -> tuple[int, list[wire.QuarantineRecord]]:
        """Rows not inserted: identical repeats are duplicates, different values are conflicts."""
        duplicates = 0
        conflicts: list[wire.QuarantineRecord] = []
        seen_in_call: set[tuple[str, int]] = set()
        for row in rows:
            key = (row[METER_ID], row[TS])
            stored = self._db.conn.execute(
                f"select {_COLUMNS}, accept_seq from readings where meter_id = ? and ts = ?", key
            ).fetchone()
            if stored[-1] == seq and key not in seen_in_call:
                seen_in_call.add(key)  # this very row was inserted now
                continue
            if measured_equal(tuple(stored[:-1]), tuple(row)):
                duplicates += 1
            else:
                conflicts.append(
                    wire.QuarantineRecord.of(
                        json.dumps(row_to_wire(row), separators=(",", ":")),
                        quarantine_reason(
                            "conflict", "other values already stored for this meter and interval"
                        ),
                        datetime.fromtimestamp(now, UTC),
                        "buffer",
                    )
                )
        return duplicates, conflicts

    def _evict_oldest(self, n: int) -> int:
        """The ``evict_oldest`` cap policy: drop the oldest never-batched readings, counted."""
        cur = self._db.conn.execute(
            "delete from readings where seq in (select seq from readings "
            "where seq > ? order by seq limit ?)",
            (self._batched_upto, n),
        )
        return cur.rowcount

    # --- the features' history ------------------------------------------------------------

    def history(
        self, meter_ids: Iterable[str], ts_from: int, ts_to: int, interval_s: int
    ) -> sqlite3.Cursor:
        """A cursor over ``(meter_id, ts, kwh, supply_on, flags, register_kwh)`` of the given
        meters with ``ts_from <= ts <= ts_to`` and this interval length (read it in chunks: a
        week of a whole gateway is large).

        A few meters are looked up meter by meter (index ``readings_meter_ts``); many are read in
        one pass over the week in time order (``readings_key``), whose table pages come in
        storage order: for a thousand meters one pass is faster than a thousand lookups, for
        one meter the lookup is ten times faster."""
        meters = sorted(set(meter_ids))
        index = "readings_meter_ts" if len(meters) <= HISTORY_BY_METER_MAX else "readings_key"
        return self._db.conn.execute(
            "select meter_id, ts, kwh, supply_on, flags, register_kwh "
            f"from readings indexed by {index} "
            "where ts >= ? and ts <= ? and interval_s = ? "
            "and meter_id in (select value from json_each(?))",
            (ts_from, ts_to, interval_s, json.dumps(meters)),
        )

    def window_sums(
        self, meter_ids: Iterable[str], ts_after: int, ts_upto: int
    ) -> dict[str, tuple[float, int]]:
        """``{meter_id: (sum kwh, seconds covered)}`` of readings with ``ts_after < ts <=
        ts_upto`` (the intervals inside that window), for the given meters."""
        return {
            str(m): (float(k), int(s))
            for m, k, s in self._db.conn.execute(
                "select meter_id, sum(kwh), sum(interval_s) from readings "
                "where ts > ? and ts <= ? and meter_id in (select value from json_each(?)) "
                "group by meter_id",
                (ts_after, ts_upto, json.dumps(sorted(set(meter_ids)))),
            )
        }

    def latest_ts(self, meter_ids: Iterable[str], ts_after: int) -> dict[str, int]:
        """Newest ``ts`` after ``ts_after`` of each given meter that has one."""
        return {
            str(m): int(t)
            for m, t in self._db.conn.execute(
                "select meter_id, max(ts) from readings where ts > ? "
                "and meter_id in (select value from json_each(?)) group by meter_id",
                (ts_after, json.dumps(sorted(set(meter_ids)))),
            )
        }

    # --- batching -------------------------------------------------------------------------

    def unbatched(self, limit: int) -> tuple[int, float | None]:
        """(readings not in a batch, counted up to ``limit``; when the oldest of them was
        accepted). Bounded work, whatever the backlog."""
        conn = self._db.conn
        n = conn.execute(
            "select count(*) from (select 1 from readings where seq > ? limit ?)",
            (self._batched_upto, limit),
        ).fetchone()[0]
        oldest = conn.execute(
            "select accepted_at from readings where seq > ? order by seq limit 1",
            (self._batched_upto,),
        ).fetchone()
        return int(n), (None if oldest is None else float(oldest[0]))

    def take_for_batch(self, batch_id: str, max_readings: int) -> BatchSlice:
        """Freeze the oldest unbatched readings (at most ``max_readings``) into ``batch_id``,
        inside the caller's transaction. The rows come in the (meter_id, ts) order readings.v2
        encodes them in: SQLite sorts, and no second copy of the rows is made here."""
        conn = self._db.conn
        first_seq, last_seq, count = conn.execute(
            "select min(seq), max(seq), count(*) from "
            "(select seq from readings where seq > ? order by seq limit ?)",
            (self._batched_upto, max_readings),
        ).fetchone()
        if not count:
            return BatchSlice(None, None, [])
        rows = conn.execute(
            f"select {_COLUMNS} from readings where seq between ? and ? order by meter_id, ts",
            (first_seq, last_seq),
        ).fetchall()
        conn.execute(
            "update readings set batch_id = ? where seq between ? and ?",
            (batch_id, first_seq, last_seq),
        )
        self._db.meta.set("batched_upto", last_seq)
        self._db.on_commit(lambda: setattr(self, "_batched_upto", int(last_seq)))
        return BatchSlice(int(first_seq), int(last_seq), rows)

    def acknowledge(self, first_seq: int | None, last_seq: int | None, now: float) -> int:
        """Mark a batch's readings acknowledged, inside the caller's transaction. Returns how
        many."""
        if first_seq is None or last_seq is None:
            return 0
        n = self._db.conn.execute(
            "update readings set acked_at = ? where seq between ? and ?",
            (now, first_seq, last_seq),
        ).rowcount

        def release() -> None:
            self._pending -= n

        self._db.on_commit(release)
        return int(n)

    def requeue(self, first_seq: int | None, last_seq: int | None) -> int:
        """Move a batch's readings behind the frontier (inside the caller's transaction): they
        take new seqs, so they are unbatched again and form a new batch. Returns how many."""
        if first_seq is None or last_seq is None:
            return 0
        conn = self._db.conn
        rows = conn.execute(
            f"select {_COLUMNS}, accepted_at, accept_seq from readings "
            "where seq between ? and ? order by seq",
            (first_seq, last_seq),
        ).fetchall()
        conn.execute("delete from readings where seq between ? and ?", (first_seq, last_seq))
        base = self._next_seq
        conn.executemany(
            f"insert into readings (seq, {_COLUMNS}, accepted_at, accept_seq) "
            f"values (?, {', '.join('?' * len(READING_COLUMNS))}, ?, ?)",
            [(base + i, *r) for i, r in enumerate(rows)],
        )
        self._db.meta.set("next_seq", base + len(rows))

        def advance() -> None:
            self._next_seq = base + len(rows)

        self._db.on_commit(advance)
        return len(rows)

    # --- housekeeping ---------------------------------------------------------------------

    def newest_ts(self) -> int | None:
        value = self._db.conn.execute("select max(ts) from readings").fetchone()[0]
        return None if value is None else int(value)

    def lowest_seq(self) -> int:
        return int(
            self._db.conn.execute("select coalesce(min(seq), 0) from readings").fetchone()[0]
        )

    def prune_acknowledged(self, before_ts: int) -> int:
        """Delete acknowledged readings with ``ts < before_ts`` (caller's transaction)."""
        return int(
            self._db.conn.execute(
                "delete from readings where acked_at is not null and ts < ?", (before_ts,)
            ).rowcount
        )

    def oldest_pending_ts(self, from_seq: int) -> int | None:
        """Reading time of the oldest unacknowledged reading at or above ``from_seq`` (every
        unacknowledged reading is: callers pass the lowest seq of an open batch or the
        frontier, so the scan skips the acknowledged readings of the retention window)."""
        value = self._db.conn.execute(
            "select min(ts) from readings where seq >= ? and acked_at is null", (from_seq,)
        ).fetchone()[0]
        return None if value is None else int(value)

    def unbatched_total(self) -> tuple[int, float | None]:
        """(every reading not in a batch, when the oldest of them was accepted)."""
        n, oldest = self._db.conn.execute(
            "select count(*), min(accepted_at) from readings where seq > ?",
            (self._batched_upto,),
        ).fetchone()
        return int(n), oldest

    def count(self) -> int:
        return int(self._db.conn.execute("select count(*) from readings").fetchone()[0])

    def keys(self) -> set[tuple[str, int]]:
        """Every (meter_id, ts) held (tests and tools)."""
        return {
            (str(m), int(t)) for m, t in self._db.conn.execute("select meter_id, ts from readings")
        }
