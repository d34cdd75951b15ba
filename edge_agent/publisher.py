"""The seam between the agent's logic and the network: something that publishes MQTT messages.

:class:`~edge_agent.mqtt_link.MqttLink` publishes through paho-mqtt; :class:`MemoryPublisher`
records what would go on the wire (tests, benchmarks). ``Sync`` (readings batches) and
``AlertOutbox`` (alerts) publish through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Called once the broker confirmed (True) or refused (False) a QoS 1 message (its PUBACK).
Delivered = Callable[[bool], None]


class Publisher(Protocol):
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_delivered: Delivered | None = None,
    ) -> bool:
        """Queue a message; False when it could not be (not connected: the caller keeps it and
        tries later). ``on_delivered`` may be called from another thread."""
        ...


@dataclass
class Sent:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    on_delivered: Delivered | None


class MemoryPublisher:
    """The in-memory publisher: records what would go on the wire; ``confirm`` plays the broker's
    PUBACKs."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[Sent] = []
        self._unconfirmed: list[Delivered] = []

    def connected(self) -> bool:
        return self.up

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_delivered: Delivered | None = None,
    ) -> bool:
        if not self.up:
            return False
        self.sent.append(Sent(topic, payload, qos, retain, on_delivered))
        if on_delivered is not None:
            self._unconfirmed.append(on_delivered)
        return True

    def confirm(self, ok: bool = True) -> int:
        """Deliver every PUBACK not delivered yet; returns how many."""
        pending, self._unconfirmed = self._unconfirmed, []
        for callback in pending:
            callback(ok)
        return len(pending)
