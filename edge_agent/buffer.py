"""The durable store-and-forward buffer of a gateway: one SQLite file in WAL mode.

Invariants (DESIGN.md, "Delivery guarantee"):

* a reading is committed here before its source is acknowledged;
* a reading belongs to at most one batch, and a batch's payload is frozen when the batch is
  formed, so a resend carries the same ``batch_id`` and the same bytes, also after a restart;
* a reading leaves the buffer only after its batch was acked and its history window has passed;
* one ``(meter_id, ts)`` is stored once; the same key with other values goes to quarantine;
* an alert about a reading is committed in the same transaction as the reading (the outbox), and
  stays until the broker acknowledged it (PUBACK).

The buffer is written by one thread of one process (the agent's main loop); ``edge-agent status``
and ``sqlite-utils`` may read it at any time.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent import wire
from edge_agent.codec import measured_equal, row_to_wire
from edge_agent.columnar import encode_columns
from edge_agent.migrations import migrate
from edge_agent.rows import READING_COLUMNS, Row

# seq is given explicitly, from a counter that only grows: SQLite would otherwise reuse
# max(seq) + 1 after the newest rows were pruned, behind the batched-up-to marker.
_INSERT_READING = (
    f"insert or ignore into readings (seq, {', '.join(READING_COLUMNS)}, accepted_at, accept_seq) "
    f"values (?, {', '.join('?' * len(READING_COLUMNS))}, ?, ?)"
)
# A batch carries at most this much quarantine text (central refuses huge messages).
MAX_BATCH_QUARANTINE_CHARS = 4_000_000
# History queries for at most this many meters go meter by meter (see Buffer.history).
HISTORY_BY_METER_MAX = 64


class BufferFull(Exception):
    """The buffer holds ``cap`` unacknowledged readings and the policy is to refuse more."""


@dataclass(frozen=True)
class AcceptResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    evicted: int = 0
    alert_ids: tuple[str, ...] = ()  # alerts committed with these readings


@dataclass(frozen=True)
class AlertRecord:
    """An ``alert.v1`` ready for the outbox (``payload`` is its JSON text)."""

    alert_id: str
    kind: str
    meter_id: str
    ts: int
    payload: str


@dataclass(frozen=True)
class OutboxAlert:
    alert_id: str
    payload: str
    attempts: int


@dataclass(frozen=True)
class Batch:
    batch_id: str
    seq: int
    payload: bytes
    readings: int
    quarantined: int
    send_count: int
    last_sent_at: float | None


@dataclass(frozen=True)
class BufferStats:
    pending_readings: int  # not yet acknowledged by central (in a batch or not)
    unbatched_readings: int
    inflight_batches: int
    total_readings: int
    oldest_pending_ts: int | None
    oldest_unbatched_accepted_at: float | None
    last_ack_at: float | None


class Buffer:
    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        cap: int = 2_000_000,
        cap_policy: str = "refuse",
    ) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("pragma journal_mode = wal")
        self.conn.execute(f"pragma synchronous = {synchronous}")
        self.conn.execute("pragma busy_timeout = 10000")
        # 512 KB of page cache: the (ts, meter_id) index is appended to, the hot pages are few,
        # and the OS keeps the file's pages anyway (4 MB raised the agent's peak RSS under a
        # backlog by 3 MB; 512 KB against 1 MB: -0.5 to -0.7 MB, no slower in bench.buffer or a
        # 1,000-meter backlog, session 6).
        self.conn.execute("pragma cache_size = -512")
        migrate(self.conn)
        self.cap = cap
        self.cap_policy = cap_policy
        self.incarnation = self._incarnation()
        self._pending = self._count_pending()
        self._accept_seq = self._meta_int("accept_seq")
        self._batched_upto = self._meta_int("batched_upto")
        top = self.conn.execute("select coalesce(max(seq), 0) from readings").fetchone()[0]
        self._next_seq = max(self._meta_int("next_seq"), int(top) + 1, self._batched_upto + 1)

    # --- small helpers -------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("select value from meta where key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _meta_int(self, key: str) -> int:
        value = self.meta(key)
        return 0 if value is None else int(value)

    def _set_meta(self, key: str, value: object) -> None:
        self.conn.execute(
            "insert into meta (key, value) values (?, ?) "
            "on conflict (key) do update set value = excluded.value",
            (key, str(value)),
        )

    def _incarnation(self) -> str:
        """A random id fixed when the file is created: batch ids never repeat across a new card."""
        value = self.meta("incarnation")
        if value is None:
            value = secrets.token_hex(4)
            with self._tx():
                self._set_meta("incarnation", value)
        return value

    def _count_pending(self) -> int:
        row = self.conn.execute("select count(*) from readings where acked_at is null").fetchone()
        return int(row[0])

    def bump(self, counters: dict[str, int]) -> None:
        """Add to counters (call inside a transaction or on its own)."""
        self.conn.executemany(
            "insert into counters (name, value) values (?, ?) "
            "on conflict (name) do update set value = value + excluded.value",
            [(k, v) for k, v in counters.items() if v],
        )

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.conn.execute("select name, value from counters")}

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def is_full(self) -> bool:
        return self._pending >= self.cap

    # --- intake ---------------------------------------------------------------------------

    def accept(
        self,
        rows: Sequence[Row],
        quarantine: Iterable[wire.QuarantineRecord] = (),
        *,
        now: float,
        meta: dict[str, object] | None = None,
        also: Sequence[tuple[str, tuple[Any, ...]]] = (),
        alerts: Sequence[AlertRecord] = (),
        counters: dict[str, int] | None = None,
    ) -> AcceptResult:
        """Commit validated readings and quarantine records in one transaction.

        ``meta`` and the ``also`` statements are written in the same transaction (a source's
        progress marker, a spool file's ledger row), so a source that resumes from them after a
        power cut neither skips nor repeats anything. ``alerts`` about readings of this call go
        into the outbox in the same transaction, each only if its reading was stored now (not for
        a duplicate or a conflict). Raises :class:`BufferFull` without writing anything when the
        cap policy is ``refuse``.
        """
        quarantine = list(quarantine)
        evicted = 0
        overflow = self._pending + len(rows) - self.cap
        if overflow > 0 and rows:
            if self.cap_policy == "refuse":
                with self._tx():
                    self.bump({"readings_refused_full": len(rows)})
                raise BufferFull(
                    f"buffer holds {self._pending} unacknowledged readings (cap {self.cap})"
                )
        with self._tx():
            if overflow > 0 and rows:
                evicted = self._evict_oldest(overflow)
            self._accept_seq += 1
            seq = self._accept_seq
            base = self._next_seq
            before = self.conn.total_changes
            self.conn.executemany(
                _INSERT_READING, [(base + i, *r, now, seq) for i, r in enumerate(rows)]
            )
            inserted = self.conn.total_changes - before
            self._set_meta("next_seq", base + len(rows))
            duplicates = conflicts = 0
            if inserted < len(rows):
                dup_rows, conflict_records = self._sort_out_repeats(rows, seq, now)
                duplicates = dup_rows
                conflicts = len(conflict_records)
                quarantine.extend(conflict_records)
            if quarantine:
                self.conn.executemany(
                    "insert into quarantine (raw, reason, received_at, source) values (?, ?, ?, ?)",
                    [(q.raw, q.reason, q.received_at.timestamp(), q.source) for q in quarantine],
                )
            self._set_meta("accept_seq", seq)
            for key, value in (meta or {}).items():
                self._set_meta(key, value)
            for sql, params in also:
                self.conn.execute(sql, params)
            alert_ids = self._insert_alerts(alerts, now, seq) if alerts else ()
            self.bump(
                {
                    "readings_accepted": inserted,
                    "readings_duplicate": duplicates,
                    "readings_conflict": conflicts,
                    "quarantined": len(quarantine),
                    "readings_evicted": evicted,
                    **(counters or {}),
                }
            )
        self._next_seq = base + len(rows)
        self._pending += inserted - evicted
        return AcceptResult(inserted, duplicates, conflicts, len(quarantine), evicted, alert_ids)

    def _insert_alerts(
        self, alerts: Sequence[AlertRecord], now: float, seq: int
    ) -> tuple[str, ...]:
        stored: list[str] = []
        kinds: dict[str, int] = {}
        for a in alerts:
            cur = self.conn.execute(
                "insert or ignore into alerts (alert_id, kind, meter_id, ts, payload, created_at) "
                "select ?, ?, ?, ?, ?, ? where exists (select 1 from readings "
                "where ts = ? and meter_id = ? and accept_seq = ?)",
                (a.alert_id, a.kind, a.meter_id, a.ts, a.payload, now, a.ts, a.meter_id, seq),
            )
            if cur.rowcount == 1:
                stored.append(a.alert_id)
                kinds[f"alerts_raised_{a.kind}"] = kinds.get(f"alerts_raised_{a.kind}", 0) + 1
        self.bump(kinds)
        return tuple(stored)

    def _sort_out_repeats(
        self, rows: Sequence[Row], seq: int, now: float
    ) -> tuple[int, list[wire.QuarantineRecord]]:
        """Rows not inserted: identical repeats are duplicates, different values are conflicts."""
        cols = ", ".join(READING_COLUMNS)
        duplicates = 0
        conflicts: list[wire.QuarantineRecord] = []
        seen_in_call: dict[tuple[str, int], Row] = {}
        for row in rows:
            key = (row[0], row[1])
            stored = self.conn.execute(
                f"select {cols}, accept_seq from readings where meter_id = ? and ts = ?", key
            ).fetchone()
            if stored[-1] == seq and key not in seen_in_call:
                seen_in_call[key] = row  # this very row was inserted now
                continue
            if measured_equal(tuple(stored[:-1]), tuple(row)):
                duplicates += 1
            else:
                conflicts.append(
                    wire.QuarantineRecord.of(
                        _json_row(row),
                        "conflict: other values already stored for this meter and interval",
                        _utc(now),
                        "buffer",
                    )
                )
        return duplicates, conflicts

    def _evict_oldest(self, n: int) -> int:
        """The ``evict_oldest`` cap policy: drop the oldest never-batched readings, counted."""
        cur = self.conn.execute(
            "delete from readings where seq in (select seq from readings "
            "where seq > ? order by seq limit ?)",
            (self._batched_upto, n),
        )
        return cur.rowcount

    # --- scoring history ------------------------------------------------------------------

    def history(
        self, meter_ids: Iterable[str], ts_from: int, ts_to: int, interval_s: int
    ) -> sqlite3.Cursor:
        """A cursor over ``(meter_id, ts, kwh, supply_on, flags, register_kwh)`` of the given
        meters with ``ts_from <= ts <= ts_to`` and this interval length (the features' history;
        read it in chunks: a week of a whole gateway is large).

        A few meters are looked up meter by meter (``readings_meter_ts``); many are read in one
        pass over the week in time order (``readings_key``), whose table pages come in storage
        order: measured at 1,000 meters, one pass 830 ms a call against 1,370 ms meter by meter,
        and for one meter 7 ms against 70 ms."""
        meters = sorted(set(meter_ids))
        index = "readings_meter_ts" if len(meters) <= HISTORY_BY_METER_MAX else "readings_key"
        return self.conn.execute(
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
            for m, k, s in self.conn.execute(
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
            for m, t in self.conn.execute(
                "select meter_id, max(ts) from readings where ts > ? "
                "and meter_id in (select value from json_each(?)) group by meter_id",
                (ts_after, json.dumps(sorted(set(meter_ids)))),
            )
        }

    # --- alerts outbox --------------------------------------------------------------------

    def add_alerts(
        self,
        alerts: Sequence[AlertRecord],
        now: float,
        meta: dict[str, object] | None = None,
        counters: dict[str, int] | None = None,
    ) -> tuple[str, ...]:
        """Alerts not tied to one incoming reading (energy balance), with a progress marker,
        in one transaction. Returns the ids stored now (an id already there is kept as is)."""
        stored: list[str] = []
        with self._tx():
            for a in alerts:
                cur = self.conn.execute(
                    "insert or ignore into alerts (alert_id, kind, meter_id, ts, payload, "
                    "created_at) values (?, ?, ?, ?, ?, ?)",
                    (a.alert_id, a.kind, a.meter_id, a.ts, a.payload, now),
                )
                if cur.rowcount == 1:
                    stored.append(a.alert_id)
                    self.bump({f"alerts_raised_{a.kind}": 1})
            for key, value in (meta or {}).items():
                self._set_meta(key, value)
            self.bump(counters or {})
        return tuple(stored)

    def alerts_due(self, sent_before: float, limit: int) -> list[OutboxAlert]:
        """Unacknowledged alerts never sent, or last sent before ``sent_before``; oldest
        first."""
        return [
            OutboxAlert(str(a), str(p), int(n))
            for a, p, n in self.conn.execute(
                "select alert_id, payload, attempts from alerts where acked_at is null "
                "and (last_sent_at is null or last_sent_at < ?) order by created_at limit ?",
                (sent_before, limit),
            )
        ]

    def mark_alerts_sent(self, alert_ids: Sequence[str], now: float, resent: int = 0) -> None:
        if not alert_ids:
            return
        with self._tx():
            self.conn.executemany(
                "update alerts set attempts = attempts + 1, last_sent_at = ? where alert_id = ?",
                [(now, a) for a in alert_ids],
            )
            self.bump({"alerts_published": len(alert_ids), "alerts_resent": resent})

    def mark_alerts_acked(self, alert_ids: Sequence[str], now: float) -> int:
        if not alert_ids:
            return 0
        with self._tx():
            before = self.conn.total_changes
            self.conn.executemany(
                "update alerts set acked_at = ? where alert_id = ? and acked_at is null",
                [(now, a) for a in alert_ids],
            )
            n = self.conn.total_changes - before
            self.bump({"alerts_delivered": n})
        return n

    def unacked_alerts(self) -> int:
        row = self.conn.execute("select count(*) from alerts where acked_at is null").fetchone()
        return int(row[0])

    def last_alerts(self) -> dict[tuple[str, str], int]:
        """Newest alerted reading time per (meter, kind): the cooldowns after a restart."""
        return {
            (str(m), str(k)): int(t)
            for m, k, t in self.conn.execute(
                "select meter_id, kind, max(ts) from alerts group by meter_id, kind"
            )
        }

    # --- models ---------------------------------------------------------------------------

    def save_model(
        self,
        *,
        name: str,
        version: str,
        created_at: str,
        sha256: str,
        message: str,
        public_key_sha256: str,
        now: float,
        keep: int = 3,
    ) -> None:
        """Record an accepted ``model.v1`` as the current one of its name (the last ``keep`` of
        each name are kept)."""
        with self._tx():
            self.conn.execute(
                "insert into models (name, version, created_at, sha256, message, accepted_at, "
                "public_key_sha256) values (?, ?, ?, ?, ?, ?, ?)",
                (name, version, created_at, sha256, message, now, public_key_sha256),
            )
            self.conn.execute(
                "delete from models where name = ? and id not in "
                "(select id from models where name = ? order by id desc limit ?)",
                (name, name, keep),
            )
            self.bump({"models_accepted": 1})

    def forget_models(self, name: str) -> int:
        """Drop the stored models of ``name`` (withdrawn by central)."""
        with self._tx():
            cur = self.conn.execute("delete from models where name = ?", (name,))
            if cur.rowcount:
                self.bump({"models_withdrawn": 1})
        return int(cur.rowcount)

    def current_models(self) -> list[tuple[str, float]]:
        """(model.v1 JSON, accepted_at) of the newest accepted model of each name, by name."""
        return [
            (str(message), float(at))
            for message, at in self.conn.execute(
                "select message, accepted_at from models "
                "where id in (select max(id) from models group by name) order by name"
            )
        ]

    # --- batches --------------------------------------------------------------------------

    def unbatched(self, limit: int) -> tuple[int, float | None]:
        """(readings + quarantine rows not in a batch, counted up to ``limit``; when the oldest
        of them was accepted). Bounded work, whatever the backlog."""
        upto = self._batched_upto
        n = self.conn.execute(
            "select count(*) from (select 1 from readings where seq > ? limit ?)",
            (upto, limit),
        ).fetchone()[0]
        oldest_r = self.conn.execute(
            "select accepted_at from readings where seq > ? order by seq limit 1", (upto,)
        ).fetchone()
        q = self.conn.execute(
            "select count(*), min(received_at) from quarantine where batch_id is null"
        ).fetchone()
        oldest = [v for v in ((oldest_r or (None,))[0], q[1]) if v is not None]
        return int(n) + int(q[0]), (min(oldest) if oldest else None)

    def form_batch(
        self,
        gateway_id: str,
        max_readings: int,
        now: float,
        compress: bool,
        schema: str = "readings.v2",
    ) -> Batch | None:
        """Freeze the oldest unbatched readings (and quarantine rows) into a new batch."""
        cols = ", ".join(READING_COLUMNS)
        with self._tx():
            # The oldest unbatched readings, read in the (meter_id, ts) order v2 encodes them
            # in: SQLite sorts, and no second copy of the rows is made here.
            first_seq, last_seq, count = self.conn.execute(
                "select min(seq), max(seq), count(*) from "
                "(select seq from readings where seq > ? order by seq limit ?)",
                (self._batched_upto, max_readings),
            ).fetchone()
            rows = (
                self.conn.execute(
                    f"select {cols} from readings where seq between ? and ? order by meter_id, ts",
                    (first_seq, last_seq),
                ).fetchall()
                if count
                else []
            )
            qrows = self.conn.execute(
                "select id, raw, reason, received_at, source from quarantine "
                "where batch_id is null order by id limit ?",
                (max_readings,),
            ).fetchall()
            size = 0
            for i, q in enumerate(qrows):  # bounded in bytes too: the rest waits for the next
                size += len(q[1])
                if i and size > MAX_BATCH_QUARANTINE_CHARS:
                    qrows = qrows[:i]
                    break
            if not rows and not qrows:
                return None
            seq = self._meta_int("batch_seq") + 1
            batch_id = f"{self.incarnation}-{seq:08d}"
            payload: dict[str, Any] = {
                "schema": schema,
                "gateway_id": gateway_id,
                "batch_id": batch_id,
                "batch_seq": seq,
                "sent_at": wire._iso_z(_utc(now)),
            }
            if schema == "readings.v2":
                payload["n"], payload["columns"] = encode_columns(rows, presorted=True)
            else:
                payload["readings"] = [row_to_wire(r) for r in rows]
            payload["quarantined"] = [
                {
                    "raw": q[1],
                    "reason": q[2],
                    "received_at": wire._iso_z(_utc(q[3])),
                    "source": q[4],
                }
                for q in qrows
            ]
            body = wire.encode(payload, compress=compress)
            self.conn.execute(
                "insert into batches (batch_id, seq, created_at, payload, first_seq, last_seq, "
                "readings, quarantined) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, seq, now, body, first_seq, last_seq, len(rows), len(qrows)),
            )
            if rows:
                self.conn.execute(
                    "update readings set batch_id = ? where seq between ? and ?",
                    (batch_id, first_seq, last_seq),
                )
                self._set_meta("batched_upto", last_seq)
            if qrows:
                self.conn.execute(
                    "update quarantine set batch_id = ? "
                    "where batch_id is null and id between ? and ?",
                    (batch_id, qrows[0][0], qrows[-1][0]),
                )
            self._set_meta("batch_seq", seq)
            self.bump({"batches_formed": 1})
        if rows:
            self._batched_upto = int(last_seq)
        return Batch(batch_id, seq, body, len(rows), len(qrows), 0, None)

    def open_batches(self) -> list[Batch]:
        """Batches formed and not yet answered by central, oldest first (payload not loaded)."""
        return [
            Batch(row[0], row[1], b"", *row[2:])
            for row in self.conn.execute(
                "select batch_id, seq, readings, quarantined, send_count, last_sent_at "
                "from batches where acked_at is null order by seq"
            )
        ]

    def payload(self, batch_id: str) -> bytes:
        row = self.conn.execute(
            "select payload from batches where batch_id = ?", (batch_id,)
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else b""

    def mark_sent(self, batch_id: str, now: float, wire_bytes: int) -> None:
        with self._tx():
            self.conn.execute(
                "update batches set send_count = send_count + 1, last_sent_at = ?, "
                "first_sent_at = coalesce(first_sent_at, ?) where batch_id = ?",
                (now, now, batch_id),
            )
            self.bump({"batches_sent": 1, "wire_bytes_sent": wire_bytes})

    def apply_ack(self, ack: wire.Ack, now: float) -> bool:
        """Record central's answer. Returns False for an ack of an unknown or answered batch."""
        with self._tx():
            row = self.conn.execute(
                "select first_seq, last_seq from batches where batch_id = ? and acked_at is null",
                (ack.batch_id,),
            ).fetchone()
            if row is None:
                self.bump({"acks_ignored": 1})
                return False
            self.conn.execute(
                "update batches set acked_at = ?, ack_status = ?, ack_json = ?, payload = null "
                "where batch_id = ?",
                (now, ack.status, ack.model_dump_json(by_alias=True), ack.batch_id),
            )
            cur = self.conn.execute(
                "update readings set acked_at = ? where seq between ? and ?",
                (now, row[0], row[1]),
            )
            self._set_meta("last_ack_at", now)
            if ack.status == "stored":
                self.bump({"batches_acked": 1, "readings_acked": cur.rowcount})
            else:
                # Central keeps a rejected batch whole in its quarantine: nothing is lost, but
                # somebody must look. The counter and status.v1 make it visible.
                self.bump({"batches_rejected": 1, "readings_rejected": cur.rowcount})
        self._pending -= cur.rowcount
        return True

    # --- housekeeping ---------------------------------------------------------------------

    def prune(self, retention_s: int) -> int:
        """Delete acknowledged readings older than the history window (by reading time)."""
        newest = self.conn.execute("select max(ts) from readings").fetchone()[0]
        if newest is None:
            return 0
        with self._tx():
            cur = self.conn.execute(
                "delete from readings where acked_at is not null and ts < ?",
                (newest - retention_s,),
            )
            # quarantine rows first: they are found through their (acknowledged) batch
            self.conn.execute(
                "delete from quarantine where batch_id in "
                "(select batch_id from batches where acked_at is not null)"
            )
            self.conn.execute(
                "delete from batches where acked_at is not null and (last_seq is null or "
                "last_seq < (select coalesce(min(seq), 0) from readings))"
            )
            self.conn.execute(
                "delete from alerts where acked_at is not null and ts < ?",
                (newest - retention_s,),
            )
            if cur.rowcount:
                self.bump({"readings_pruned": cur.rowcount})
        return cur.rowcount

    def stats(self) -> BufferStats:
        c = self.conn
        pending = self._pending  # kept by accept/apply_ack: no count over the table
        # Unacknowledged readings are in open batches or not batched yet: start the scan at the
        # lowest such seq instead of walking every acknowledged reading of the retention window.
        lo = c.execute("select min(first_seq) from batches where acked_at is null").fetchone()[0]
        floor = self._batched_upto + 1 if lo is None else min(int(lo), self._batched_upto + 1)
        oldest_ts = c.execute(
            "select min(ts) from readings where seq >= ? and acked_at is null", (floor,)
        ).fetchone()[0]
        unbatched, oldest_acc = c.execute(
            "select count(*), min(accepted_at) from readings where seq > ?",
            (self._meta_int("batched_upto"),),
        ).fetchone()
        inflight = c.execute("select count(*) from batches where acked_at is null").fetchone()[0]
        total = c.execute("select count(*) from readings").fetchone()[0]
        last_ack = self.meta("last_ack_at")
        return BufferStats(
            pending,
            unbatched,
            inflight,
            total,
            oldest_ts,
            oldest_acc,
            float(last_ack) if last_ack else None,
        )

    def keys(self) -> set[tuple[str, int]]:
        """Every (meter_id, ts) held (tests and tools)."""
        return {(str(m), int(t)) for m, t in self.conn.execute("select meter_id, ts from readings")}


class _Transaction:
    """``with``: BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("begin immediate")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("commit" if exc_type is None else "rollback")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _json_row(row: Row) -> str:
    return json.dumps(row_to_wire(row), separators=(",", ":"))
