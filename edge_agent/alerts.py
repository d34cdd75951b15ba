"""``alert.v1``: ids, payloads, the per-meter cooldown and the outbox that publishes them.

Delivery: an alert is committed to the buffer's ``alerts`` table (the outbox) in the same
transaction as the reading it is about, then published QoS1 on ``{root}/gw/{gateway_id}/alerts``
and marked delivered when central's ``alert_ack.v1`` for it arrives on the gateway's ack topic
(central sends it after committing the alert to ``raw.alerts``). The broker's PUBACK is not
enough: a broker killed after its PUBACK and before it wrote its store loses the message. Not
answered within ``resend_s`` (doubled after each unanswered send, at most ``resend_max_s``), or
still open after a restart or a reconnect, an alert is published again with the same
``alert_id``: nothing is lost, and subscribers de-duplicate.

``alert_id`` is the first 32 hex digits of
``sha256("alert.v1|" + kind + "|" + meter_id + "|" + ts + "|" + basis)``, where ``ts`` is the
reading's end (epoch seconds) and ``basis`` is ``name:version`` of the model for ``anomaly``
alerts, ``window=<seconds>`` for ``energy_balance`` and empty for the rule alerts (``tamper``,
``register_rollback``). The gateway is not part of it: the same reading scored by the same model
gives the same id wherever it is scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial

from edge_agent import failpoints, wire
from edge_agent.buffer import AlertRecord, AlertStore, BufferFull
from edge_agent.publisher import Publisher

log = logging.getLogger(__name__)


def alert_id(kind: str, meter_id: str, ts: int, basis: str = "") -> str:
    text = f"alert.v1|{kind}|{meter_id}|{int(ts)}|{basis}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def make_alert(
    *,
    gateway_id: str,
    kind: str,
    meter_id: str,
    ts: int,
    basis: str = "",
    score: float | None = None,
    threshold: float | None = None,
    model_version: str | None = None,
    features: Mapping[str, float] | None = None,
    detail: str | None = None,
) -> AlertRecord:
    """An alert ready for the outbox (validated against ``alert.v1`` here, once)."""
    aid = alert_id(kind, meter_id, ts, basis)
    alert = wire.Alert(
        alert_id=aid,
        gateway_id=gateway_id,
        meter_id=meter_id,
        ts=datetime.fromtimestamp(ts, UTC),
        kind=kind,
        score=score,
        threshold=threshold,
        model_version=model_version,
        features=dict(features or {}),
        detail=detail[:500] if detail else None,
    )
    payload = json.dumps(alert.to_json_dict(), separators=(",", ":"), ensure_ascii=False)
    return AlertRecord(aid, kind, meter_id, int(ts), payload)


def raise_gateway_alert(
    store: AlertStore, *, gateway_id: str, kind: str, ts: float, detail: str, now: float
) -> bool:
    """An alert about the gateway itself (``meter_id`` is the gateway id: ``buffer_full``,
    ``disk_full``, ``clock_suspect``), one id per kind and hour of ``ts``, into the outbox.
    False when the buffer has no room for it now: the caller tries again later."""
    alert = make_alert(
        gateway_id=gateway_id,
        kind=kind,
        meter_id=gateway_id,
        ts=int(ts) // 3600 * 3600,
        detail=detail,
    )
    try:
        store.add([alert], now)
    except BufferFull:
        return False
    return True


class Cooldown:
    """At most one alert per (meter, kind) within ``seconds`` of reading time.

    Reading time, not wall-clock time: a backlog replayed after an outage raises the same alerts
    as it would have live. The state comes back from the outbox after a restart."""

    def __init__(self, seconds: int, last: Mapping[tuple[str, str], int] | None = None) -> None:
        self.seconds = int(seconds)
        self.last: dict[tuple[str, str], int] = dict(last or {})

    def allows(self, meter_id: str, kind: str, ts: int) -> bool:
        prev = self.last.get((meter_id, kind))
        return prev is None or abs(ts - prev) >= self.seconds

    def note(self, meter_id: str, kind: str, ts: int) -> None:
        key = (meter_id, kind)
        prev = self.last.get(key)
        if prev is None or ts > prev:
            self.last[key] = ts


class AlertOutbox:
    """Publishes the outbox QoS1 through the :class:`~edge_agent.publisher.Publisher` and marks
    alerts delivered on central's answer (to any of their sends).

    ``tick`` and ``answered`` run on the agent's main loop (the buffer's one writer); a PUBACK
    callback may run on the MQTT network thread and only puts the alert id on a queue."""

    def __init__(
        self,
        store: AlertStore,
        publisher: Publisher,
        topic: str,
        *,
        resend_s: float = 30.0,
        resend_max_s: float = 900.0,
        max_per_tick: int = 200,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.topic = topic
        self.resend_s = resend_s
        self.resend_max_s = resend_max_s
        self.max_per_tick = max_per_tick
        self._answers: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        # After a start or a reconnect every open alert goes out at once: earlier sends may
        # have been lost with the connection.
        self._reconnected = True
        self._resend_from: float | None = None

    def reconnected(self) -> None:
        """Called on (re)connect, from the network thread."""
        self._reconnected = True

    def drain_answers(self) -> int:
        """Count the publishes the broker refused since the last call (e.g. not authorised:
        they go again after ``resend_s``); a PUBACK changes nothing, central's answer does."""
        refused = 0
        while True:
            try:
                _, ok = self._answers.get_nowait()
            except queue.Empty:
                break
            refused += not ok
        if refused:
            self.store.count_refused(refused)
        return refused

    def answered(self, acks: Sequence[wire.AlertAck], now: float) -> int:
        """Central stored (or quarantined, with its reason) these alerts: they leave the queue.
        Returns the alerts newly delivered."""
        for ack in acks:
            if ack.status == "rejected":
                log.error("central rejected alert %s: %s", ack.alert_id, ack.reason)
        return self.store.mark_delivered(
            [(ack.alert_id, ack.status == "rejected") for ack in acks], now
        )

    def tick(self, now: float) -> int:
        """Publish what is due; returns how many alerts were published or confirmed."""
        work = self.drain_answers()
        if not self.publisher.connected():
            return work
        if self._reconnected:
            self._reconnected = False
            self._resend_from = now  # everything sent before now goes again
        due = self.store.due(
            now,
            resend_s=self.resend_s,
            resend_max_s=self.resend_max_s,
            limit=self.max_per_tick,
            sent_before=self._resend_from,
        )
        if len(due) < self.max_per_tick:
            self._resend_from = None
        sent: list[str] = []
        resent = 0
        for alert in due:
            answered = partial(self._answer, alert.alert_id)
            if not self.publisher.publish(
                self.topic, alert.payload.encode(), qos=1, on_delivered=answered
            ):
                break  # connection lost meanwhile: the rest waits for the next tick
            failpoints.hit("alerts.after_publish")
            sent.append(alert.alert_id)
            resent += alert.attempts > 0
        self.store.mark_sent(sent, now, resent)
        return work + len(sent)

    def _answer(self, alert_id: str, ok: bool) -> None:
        self._answers.put((alert_id, ok))
