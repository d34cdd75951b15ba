"""The secure broker for tests: a PKI made once per test session, a private broker with the
shipped secure configuration per test, and MQTT clients that connect with an identity."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central import local_services
from central.local_services import SecureMosquitto
from central.pki import Pki

GATEWAYS = ("gw-a", "gw-b", "gw-c", "gw-d")
INGEST = ("svc-ingest-1", "svc-ingest-2", "svc-ingest-3")


def make_pki(directory: Path) -> Pki:
    pki = Pki(directory)
    pki.init("eiot test CA")
    pki.issue("localhost", "broker", hosts=("127.0.0.1",))
    for gw in GATEWAYS:
        pki.issue(gw, "gateway")
    for name in INGEST:
        pki.issue(name, "ingest")
    pki.issue("svc-models", "models")
    pki.issue("svc-models-keeper", "models")
    pki.issue("svc-alerts-test", "alerts")
    pki.issue("svc-ops", "ops")
    pki.issue("svc-admin", "admin")
    return pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki, topic_root: str) -> Iterator[SecureMosquitto]:
    broker = SecureMosquitto(tmp_path / "secure-broker", pki.dir, topic_root)
    broker.start()
    yield broker
    broker.kill()


def identity_env(pki: Pki, name: str, port: int) -> dict[str, str]:
    """EIOT_* variables that make a part connect to the secure broker as ``name``."""
    return local_services.identity_env(pki, name, "127.0.0.1", port)


@dataclass
class Client:
    """A paho MQTT 5 client that records every answer of the broker."""

    client: mqtt.Client
    connack: Any = None
    disconnects: list[Any] = field(default_factory=list)
    subacks: dict[int, list[Any]] = field(default_factory=dict)
    pubacks: dict[int, Any] = field(default_factory=dict)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    _event: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, cond: Any, timeout: float = 10.0, what: str = "") -> None:
        with self._event:
            if not self._event.wait_for(cond, timeout):
                raise AssertionError(f"timed out waiting for {what or cond}")

    def subscribe(self, topic: str) -> Any:
        """The broker's answer (reason code) to a SUBSCRIBE."""
        _, mid = self.client.subscribe(topic, qos=1)
        self.wait(lambda: mid in self.subacks, what=f"SUBACK of {topic}")
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> Any:
        """The broker's answer (reason code) to a QoS 1 PUBLISH."""
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        self.wait(lambda: mid in self.pubacks, what=f"PUBACK of {topic}")
        return self.pubacks[mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(
    pki: Pki | None,
    name: str | None,
    port: int,
    *,
    client_id: str = "",
    ca: Path | None = None,
    session: bool = False,
    tls: bool = True,
) -> Client:
    """Connect as identity ``name`` (no certificate when ``name`` is None)."""
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if tls:
        assert pki is not None
        raw.tls_set(
            ca_certs=str(ca or pki.ca_cert_path),
            certfile=str(pki.cert_path(name)) if name else None,
            keyfile=str(pki.key_path(name)) if name else None,
        )
    c = Client(raw)

    def note(attr: str, value: Any) -> None:
        with c._event:
            setattr(c, attr, value) if attr == "connack" else getattr(c, attr).append(value)
            c._event.notify_all()

    def on_subscribe(cl: Any, u: Any, mid: int, codes: Any, p: Any) -> None:
        with c._event:
            c.subacks[mid] = list(codes)
            c._event.notify_all()

    def on_publish(cl: Any, u: Any, mid: int, code: Any, p: Any) -> None:
        with c._event:
            c.pubacks[mid] = code
            c._event.notify_all()

    raw.on_connect = lambda cl, u, f, code, p: note("connack", code)
    raw.on_disconnect = lambda cl, u, f, code, p: note("disconnects", code)
    raw.on_subscribe = on_subscribe
    raw.on_publish = on_publish
    raw.on_message = lambda cl, u, m: note("messages", m)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session:
        props.SessionExpiryInterval = 600
    raw.connect("127.0.0.1", port, clean_start=not session, properties=props)
    raw.loop_start()
    c.wait(lambda: c.connack is not None or c.disconnects, what="CONNACK")
    return c


def refused_tls(pki: Pki, name: str | None, port: int, **kw: Any) -> str:
    """Why a connection fails (it must): the exception's text."""
    try:
        c = connect(pki, name, port, **kw)
    except Exception as exc:  # noqa: BLE001 - the failure is what the test wants
        return f"{type(exc).__name__}: {exc}"
    time.sleep(0.5)
    state = f"connack={c.connack} disconnects={c.disconnects}"
    c.close()
    return state
