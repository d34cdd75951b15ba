"""Readings published by meters or a vendor head-end on a local MQTT topic.

Each message holds one reading object or a JSON list of them. The subscription is QoS1 with
manual acknowledgement: a message is PUBACKed only after its readings (or quarantine records)
are committed to the buffer, so a power cut before that makes the broker deliver it again. The
session is persistent, so messages published while the agent is down wait at the broker.
"""

from __future__ import annotations

import logging
import queue

import paho.mqtt.client as mqtt

from edge_agent.buffer import BufferFull
from edge_agent.fields import Row
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.sources import Intake
from edge_agent.wire import QuarantineRecord

log = logging.getLogger(__name__)


class MqttSource:
    name = "mqtt"

    def __init__(self, link_config: LinkConfig, topic: str, intake: Intake, max_drain: int = 5000):
        link_config.subscriptions = [(topic, 1)]
        link_config.manual_ack = True
        link_config.receive_maximum = link_config.receive_maximum or 1000
        self.intake = intake
        self.max_drain = max_drain
        self._inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._held: list[mqtt.MQTTMessage] = []  # refused while the buffer was full
        self.link = MqttLink(link_config, on_message=self._inbox.put)
        self.link.start()

    def close(self) -> None:
        self.link.stop()

    def poll(self, now: float) -> int:
        messages, self._held = self._held, []
        while len(messages) < self.max_drain:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if not messages:
            return 0
        results: list[Row | QuarantineRecord] = []
        for msg in messages:
            results.extend(
                self.intake.validator.check_json(bytes(msg.payload), f"mqtt:{msg.topic}")
            )
        try:
            self.intake.take(results)
        except BufferFull:
            self._held = messages  # not acknowledged: nothing is lost, the source waits
            return 0
        for msg in messages:
            if msg.qos > 0:
                self.link.ack(msg.mid, msg.qos)
        return len(messages)
