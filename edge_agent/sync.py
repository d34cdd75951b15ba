"""Store-and-forward: freeze buffered readings into batches, publish them QoS1, resend the same
batch until central's ``ack.v1`` arrives.

Pure logic over four seams (the batch queue, the publisher, the wall clock that stamps, the
monotonic clock that times): the agent drives ``tick()`` from its main loop, tests drive it by
hand. Waits are measured on the monotonic clock, so a wall clock stepped back a day (a gateway
without RTC before NTP) neither holds a resend for a day nor a young batch until it catches up.

The wait for central's ack starts at the broker's PUBACK, not at the publish: over a slow 3G
link a batch may wait in the MQTT client's queue longer than the ack timeout, and a link that
died without a word takes up to 1.5 keepalives to notice; resending then would only queue the
same bytes twice (the client sends what it holds again itself after a reconnect). A send the
broker never answers is repeated after ``ack_timeout_max_s``.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from edge_agent import failpoints, topics, wire
from edge_agent.buffer import BatchQueue
from edge_agent.publisher import Publisher


@dataclass(frozen=True)
class SyncPolicy:
    batch_max_readings: int = 10_000
    batch_max_age_s: float = 5.0
    inflight_window: int = 4
    ack_timeout_s: float = 20.0
    ack_timeout_max_s: float = 300.0
    compress: bool = True
    schema: str = "readings.v2"

    def timeout_after(self, send_count: int) -> float:
        """Wait longer after each resend: a central that is down costs few bytes on 3G."""
        return float(min(self.ack_timeout_max_s, self.ack_timeout_s * 2 ** max(0, send_count - 1)))


class Sync:
    def __init__(
        self,
        batches: BatchQueue,
        publisher: Publisher,
        clock: Callable[[], float],
        *,
        gateway_id: str,
        topic_root: str = topics.DEFAULT_ROOT,
        policy: SyncPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batches = batches
        self.publisher = publisher
        self.clock = clock
        self.monotonic = monotonic
        self._sent: dict[str, float] = {}  # batch id → monotonic time of its last send here
        self._brokered: dict[str, float] = {}  # batch id → when the broker answered that send
        # (batch id, when) from the network thread
        self._answers: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        self.gateway_id = gateway_id
        self.policy = policy or SyncPolicy()
        self.topic = topics.readings(topic_root, gateway_id)
        # After a restart every open batch is resent at once: its earlier sends may be lost.
        self._resend_all = True
        self.flush = False  # form a batch even when it is small and young (shutdown, tests)

    def tick(self) -> int:
        """Send what is due. Returns the number of batches published."""
        if not self.publisher.connected():
            return 0
        now = self.clock()
        mono = self.monotonic()
        sent = 0
        self._take_answers()
        open_batches = self.batches.open()
        still_open = {b.batch_id for b in open_batches}
        self._sent = {k: v for k, v in self._sent.items() if k in still_open}
        self._brokered = {k: v for k, v in self._brokered.items() if k in still_open}
        for batch in open_batches:
            last = self._sent.get(batch.batch_id)
            brokered = self._brokered.get(batch.batch_id)
            timeout = self.policy.timeout_after(batch.send_count)
            due = (
                self._resend_all
                or last is None  # never sent by this process (a restart resends everything)
                or (brokered is not None and mono - brokered >= timeout)
                or mono - last >= max(timeout, self.policy.ack_timeout_max_s)
            )
            payload = self.batches.payload(batch.batch_id) if due else b""
            if payload and self._send(batch.batch_id, payload, now, batch.send_count > 0):
                sent += 1
        self._resend_all = False
        in_flight = len(open_batches)
        while in_flight < self.policy.inflight_window and self._batch_due(now):
            formed = self.batches.form(
                self.gateway_id,
                self.policy.batch_max_readings,
                now,
                self.policy.compress,
                self.policy.schema,
            )
            if formed is None:
                break
            failpoints.hit("sync.after_form")
            in_flight += 1
            if self._send(formed.batch_id, formed.payload, now, False):
                sent += 1
        return sent

    def on_ack(self, ack: wire.Ack) -> bool:
        return self.batches.apply_ack(ack, self.clock())

    def _batch_due(self, now: float) -> bool:
        count, oldest = self.batches.unbatched(self.policy.batch_max_readings)
        if count == 0:
            return False
        if count >= self.policy.batch_max_readings or self.flush:
            return True
        if oldest is None:
            return False
        age = now - oldest  # wall clock: accepted_at is stored; negative after a step back
        return not 0 <= age < self.policy.batch_max_age_s

    def _take_answers(self) -> None:
        while True:
            try:
                batch_id, when = self._answers.get_nowait()
            except queue.Empty:
                return
            if batch_id in self._sent:
                self._brokered[batch_id] = when

    def _answered(self, batch_id: str, ok: bool) -> None:
        """Network thread: the broker answered a send (a refusal starts the wait too)."""
        self._answers.put((batch_id, self.monotonic()))

    def _send(self, batch_id: str, payload: bytes, now: float, resend: bool) -> bool:
        answered = partial(self._answered, batch_id)
        if not self.publisher.publish(self.topic, payload, qos=1, on_delivered=answered):
            return False
        failpoints.hit("sync.after_publish")
        self._sent[batch_id] = self.monotonic()
        self._brokered.pop(batch_id, None)  # the wait starts at this send's answer
        self.batches.mark_sent(batch_id, now, len(payload), resend=resend)
        return True
