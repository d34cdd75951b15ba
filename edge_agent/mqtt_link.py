"""A paho-mqtt 2.x client kept connected: MQTT 5, persistent session, stable client id,
reconnect with exponential backoff and full jitter, subscriptions renewed on every connect.

The network loop runs in its own thread; ``publish`` may be called from any thread. Incoming
messages are handed to ``on_message`` on the network thread: keep that callback short (put the
message on a queue). The same holds for a publish's ``on_delivered`` callback (the PUBACK).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.backoff import Backoff
from edge_agent.publisher import Delivered
from edge_agent.settings_base import BrokerSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]


@dataclass
class LinkConfig:
    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # this client's certificate (its CN is its identity)
    key_file: Path | None = None
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    # Retained QoS1 last will: topic and a payload made afresh for every connection (an offline
    # status stamped with the connect time, so each unclean drop is a new row at central).
    will: tuple[str, Callable[[], bytes]] | None = None
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    manual_ack: bool = False
    receive_maximum: int | None = None

    @classmethod
    def of(cls, b: BrokerSettings, client_id: str, **extra: Any) -> LinkConfig:
        """The link a part's broker settings describe."""
        return cls(
            client_id=client_id,
            host=b.broker_host,
            port=b.broker_port,
            username=b.broker_username,
            password=b.broker_password.get_secret_value() if b.broker_password else None,
            tls=b.broker_tls,
            ca_file=b.broker_ca_file,
            cert_file=b.broker_cert_file,
            key_file=b.broker_key_file,
            **extra,
        )


def _ignore(ok: bool) -> None:
    pass


class MqttLink:
    def __init__(
        self,
        config: LinkConfig,
        on_message: MessageHandler | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(config.backoff_min_s, config.backoff_max_s)
        self.connects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=config.manual_ack,
        )
        self.client.max_inflight_messages_set(64)
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        if config.tls:
            self.client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.cert_file) if config.cert_file else None,
                keyfile=str(config.key_file) if config.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message
        self.client.on_publish = self._handle_publish
        self.client.on_subscribe = self._handle_subscribe
        # Only the network thread touches the socket. Without this hook paho writes a message
        # queued from another thread (publish, a manual ack) from that thread, while the network
        # thread may be reading: two threads in one TLS connection corrupt it ("bad record
        # mac"). With it, paho queues the packet and wakes the network thread, which writes.
        self.client.on_socket_register_write = _ignore_socket
        # PUBACK callbacks by message id. paho calls on_publish holding a lock that publish()
        # takes too, so this lock is never held while calling paho; a PUBACK that arrives before
        # publish() returned its mid waits in _early until publish() picks it up.
        self._delivery_lock = threading.Lock()
        self._on_delivered: dict[int, Delivered] = {}
        self._early: dict[int, bool] = {}

    # --- public ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.config.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
        if self._thread:
            self._thread.join(timeout)

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_delivered: Delivered | None = None,
    ) -> bool:
        """Queue a message; False when not connected (the caller keeps it and tries later).
        ``on_delivered`` is called on the network thread when the broker answers a QoS 1
        message; paho keeps a message queued while the connection drops and sends it again,
        so the callback may come although this returned False."""
        if not self.connected():
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        # paho calls on_publish once for every message it holds (sent, or queued while the
        # connection is down): QoS 0 when written, QoS 1 on the PUBACK. Every such mid is
        # registered here, or its answer taken from _early if it came first, so no answer is
        # left behind to be mistaken for a later message's. Only a QoS 1 answer is a delivery.
        held = info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
        callback = on_delivered if qos > 0 and on_delivered is not None else _ignore
        with self._delivery_lock:
            early = self._early.pop(info.mid, None)
            if held and early is None:
                self._on_delivered[info.mid] = callback
        if held and early is not None:
            callback(early)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (``manual_ack`` links only)."""
        self.client.ack(mid, qos)

    # --- network thread -------------------------------------------------------------------

    def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        if self.config.receive_maximum:
            props.ReceiveMaximum = self.config.receive_maximum
        while not self._stop.is_set():
            if self.config.will:
                topic, make = self.config.will
                self.client.will_set(topic, make(), qos=1, retain=True)
            try:
                self.client.connect(
                    self.config.host,
                    self.config.port,
                    keepalive=self.config.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            except OSError as exc:
                delay = self._backoff.next_delay()
                log.info(
                    "connect to %s:%s failed (%s); retry in %.1fs",
                    self.config.host,
                    self.config.port,
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                continue
            while not self._stop.is_set():
                rc = self.client.loop(timeout=0.1)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            self._connected.clear()
            if not self._stop.is_set():
                delay = self._backoff.next_delay()
                log.info("connection lost (rc=%s); reconnect in %.1fs", rc, delay)
                self._stop.wait(delay)

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        self._backoff.reset()
        self.connects += 1
        if self.config.subscriptions:
            client.subscribe(list(self.config.subscriptions))
        self._connected.set()
        if self._on_connect_cb:
            self._on_connect_cb()

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message:
            self._on_message(msg)

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        # Messages published before the broker took the subscriptions reach nobody (QoS 1 is
        # kept only for sessions already subscribed): this line tells a reader they now count.
        refused = [
            f"{topic} ({code})"
            for (topic, _), code in zip(self.config.subscriptions, reasons, strict=False)
            if code.is_failure
        ]
        if refused:
            log.warning("broker refused subscriptions: %s", ", ".join(refused))
        log.info("subscribed to %d topics", len(self.config.subscriptions) - len(refused))

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        ok = not bool(getattr(reason, "is_failure", False))
        with self._delivery_lock:
            callback = self._on_delivered.pop(mid, None)
            if callback is None:
                self._early[mid] = ok  # publish() has not registered it yet
        if callback is not None:
            callback(ok)


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's external-loop hook, set only so that writes stay on the network thread."""
