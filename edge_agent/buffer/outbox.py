"""The alert outbox: ``alert.v1`` messages committed with what raised them, kept until delivered.

An alert about a reading is committed in the same transaction as the reading (see
``ReadingStore.accept``), then published until its delivery is confirmed; an alert id already
stored is kept as it is (ids are deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.buffer.db import BufferDB


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


def _count_kinds(stored: Sequence[AlertRecord]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for a in stored:
        key = f"alerts_raised_{a.kind}"
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


class AlertStore:
    def __init__(self, db: BufferDB) -> None:
        self._db = db

    def add_for_readings(
        self, alerts: Sequence[AlertRecord], now: float, accept_seq: int
    ) -> tuple[str, ...]:
        """Inside an accept transaction: store each alert whose reading was stored by this very
        accept (``accept_seq``), not for a duplicate or a conflict. Returns the ids stored."""
        stored = [
            a
            for a in alerts
            if self._db.conn.execute(
                "insert or ignore into alerts (alert_id, kind, meter_id, ts, payload, created_at) "
                "select ?, ?, ?, ?, ?, ? where exists (select 1 from readings "
                "where ts = ? and meter_id = ? and accept_seq = ?)",
                (
                    a.alert_id,
                    a.kind,
                    a.meter_id,
                    a.ts,
                    a.payload,
                    now,
                    a.ts,
                    a.meter_id,
                    accept_seq,
                ),
            ).rowcount
            == 1
        ]
        self._db.counters.add(_count_kinds(stored))
        return tuple(a.alert_id for a in stored)

    def add(
        self,
        alerts: Sequence[AlertRecord],
        now: float,
        meta: dict[str, object] | None = None,
        counters: dict[str, int] | None = None,
    ) -> tuple[str, ...]:
        """Alerts not tied to one incoming reading (energy balance), with progress markers and
        counters, in one transaction. Returns the ids stored now."""
        with self._db.transaction():
            stored = self.insert(alerts, now)
            for key, value in (meta or {}).items():
                self._db.meta.set(key, value)
            self._db.counters.add(counters or {})
        return stored

    def insert(self, alerts: Sequence[AlertRecord], now: float) -> tuple[str, ...]:
        """Inside the caller's transaction (a source's ``also`` write): store the alerts whose
        ids are new, counted. Returns the ids stored now."""
        stored = [
            a
            for a in alerts
            if self._db.conn.execute(
                "insert or ignore into alerts (alert_id, kind, meter_id, ts, payload, "
                "created_at) values (?, ?, ?, ?, ?, ?)",
                (a.alert_id, a.kind, a.meter_id, a.ts, a.payload, now),
            ).rowcount
            == 1
        ]
        self._db.counters.add(_count_kinds(stored))
        return tuple(a.alert_id for a in stored)

    def due(
        self,
        now: float,
        *,
        resend_s: float,
        resend_max_s: float,
        limit: int,
        sent_before: float | None = None,
    ) -> list[OutboxAlert]:
        """Undelivered alerts due to go (out), oldest first: never sent; sent ``attempts`` times
        and unanswered for ``resend_s`` doubled per earlier attempt, at most ``resend_max_s``
        (central down for hours costs a few sends an hour, not one every ``resend_s``); last
        sent before ``sent_before`` (a reconnect: earlier sends may be lost); or last sent
        after ``now`` (the wall clock stepped back since)."""
        return [
            OutboxAlert(str(a), str(p), int(n))
            for a, p, n in self._db.conn.execute(
                "select alert_id, payload, attempts from alerts where acked_at is null "
                "and (last_sent_at is null or last_sent_at > :now or last_sent_at < :before "
                "or last_sent_at + min(:base * (1 << min(max(attempts - 1, 0), 30)), :cap) "
                "<= :now) order by created_at limit :limit",
                {
                    "now": now,
                    "before": sent_before if sent_before is not None else float("-inf"),
                    "base": resend_s,
                    "cap": max(resend_s, resend_max_s),
                    "limit": limit,
                },
            )
        ]

    def mark_sent(self, alert_ids: Sequence[str], now: float, resent: int = 0) -> None:
        if not alert_ids:
            return
        with self._db.transaction():
            self._db.conn.executemany(
                "update alerts set attempts = attempts + 1, last_sent_at = ? where alert_id = ?",
                [(now, a) for a in alert_ids],
            )
            self._db.counters.add({"alerts_published": len(alert_ids), "alerts_resent": resent})

    def mark_delivered(self, answers: Sequence[tuple[str, bool]], now: float) -> int:
        """Record central's answers, ``(alert_id, rejected)``; returns how many alerts were not
        delivered before (an answer repeated counts once)."""
        if not answers:
            return 0
        delivered = rejected = 0
        with self._db.transaction():
            for alert_id, refused in answers:
                changed = self._db.conn.execute(
                    "update alerts set acked_at = ? where alert_id = ? and acked_at is null",
                    (now, alert_id),
                ).rowcount
                delivered += changed
                rejected += changed if refused else 0
            self._db.counters.add(
                {"alerts_delivered": delivered, "alerts_rejected_by_central": rejected}
            )
        return delivered

    def count_refused(self, n: int) -> None:
        """The broker refused ``n`` publishes (e.g. not authorised); they are sent again."""
        self._db.counters.add({"alerts_refused_by_broker": n})

    def undelivered(self) -> int:
        row = self._db.conn.execute("select count(*) from alerts where acked_at is null").fetchone()
        return int(row[0])

    def last_alerted(self) -> dict[tuple[str, str], int]:
        """Newest alerted reading time per (meter, kind): the cooldowns after a restart."""
        return {
            (str(m), str(k)): int(t)
            for m, k, t in self._db.conn.execute(
                "select meter_id, kind, max(ts) from alerts group by meter_id, kind"
            )
        }

    def prune_delivered(self, before_ts: int) -> None:
        """Drop delivered alerts about readings before ``before_ts`` (caller's transaction)."""
        self._db.conn.execute(
            "delete from alerts where acked_at is not null and ts < ?", (before_ts,)
        )

    def payloads(self) -> list[str]:
        """Every alert held, as its alert.v1 JSON, by reading time (tests and tools)."""
        return [
            str(p)
            for (p,) in self._db.conn.execute(
                "select payload from alerts order by ts, meter_id, kind"
            )
        ]
