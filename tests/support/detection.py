"""Models and readings for the detection tests: small IsolationForests trained on ``ml.synthetic``
meters (cached per test process), signed model.v1 messages, JSONL/row builders, and a gateway's
buffer + detection + intake built the way the agent builds them."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import build_detection
from edge_agent.buffer import AcceptResult, Buffer
from edge_agent.energy import EnergyBalance
from edge_agent.fields import Row
from edge_agent.rollout import ModelManager
from edge_agent.scoring import Detector
from edge_agent.settings import AgentSettings
from edge_agent.sources import Intake
from edge_agent.validate import Validator, reading_to_row
from edge_agent.wire import QuarantineRecord, Reading

INTERVAL = 1800
# Readings start 40 days before "now" of the test run: in the past (the agent refuses readings
# from the future), and aligned to a UTC day.
T0 = (int(datetime.now(UTC).timestamp()) // 86400 - 40) * 86400


@dataclass(frozen=True)
class Models:
    key: Ed25519PrivateKey
    public_key: str  # base64 raw key, as agents are configured
    v1: dict[str, Any]
    v2: dict[str, Any]  # another forest (other seed), created later than v1
    threshold_v1: float
    urban: dict[str, Any]  # a per-class model "iforest.urban", version "c1" (third seed)


@functools.lru_cache(maxsize=1)
def models() -> Models:
    """Two signed models trained on labelled synthetic meters (~1 s)."""
    from ml.publish import message_from_trained, public_key_b64
    from ml.synthetic import FLAG_BITS, make_readings
    from ml.train import features_for, train

    r = make_readings(80, 21, seed=1, attack_fraction=0.3)
    x = features_for(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, FLAG_BITS
    )
    y = r.label != ""
    key = Ed25519PrivateKey.generate()
    t1 = train(x, labels=y, n_estimators=60, random_state=1)
    t2 = train(x, labels=y, n_estimators=60, random_state=2)
    t3 = train(x, labels=y, n_estimators=60, random_state=3)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    v1 = message_from_trained(t1, name="iforest", version="v1", private_key=key, created_at=created)
    v2 = message_from_trained(
        t2, name="iforest", version="v2", private_key=key, created_at=created + timedelta(days=1)
    )
    urban = message_from_trained(
        t3, name="iforest.urban", version="c1", private_key=key, created_at=created
    )
    return Models(key, public_key_b64(key), v1, v2, t1.threshold, urban)


def daily_kwh(k: int, level: float = 0.4) -> float:
    """A plausible household profile: low at night, peaks morning and evening (kWh per 30 min)."""
    hour = ((k % 48) + 0.5) / 2.0
    shape = (
        0.35 + np.exp(-0.5 * ((hour - 7) / 1.5) ** 2) + 1.8 * np.exp(-0.5 * ((hour - 20) / 2) ** 2)
    )
    return round(float(level * shape * 0.5), 3)


def reading(meter: str, k: int, kwh: float | None = None, **extra: Any) -> dict[str, Any]:
    """The k-th 30-min reading of ``meter`` after T0, as a wire dict."""
    ts = datetime.fromtimestamp(T0 + INTERVAL * (k + 1), UTC)
    obj: dict[str, Any] = {
        "meter_id": meter,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kwh": daily_kwh(k) if kwh is None else kwh,
    }
    obj.update(extra)
    return obj


def row_of(obj: dict[str, Any]) -> Row:
    """A wire dict → a buffer row (validated like the agent does)."""
    return reading_to_row(Reading.model_validate(obj))


@dataclass
class Gateway:
    """A gateway's buffer, detection and intake, wired by ``edge_agent.agent.build_detection``."""

    buffer: Buffer
    detector: Detector
    models: ModelManager
    energy: EnergyBalance | None
    intake: Intake

    def take(self, results: Iterable[Row | QuarantineRecord]) -> AcceptResult:
        return self.intake.take(results)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert in the outbox, by reading time."""
        return [json.loads(p) for p in self.buffer.alerts.payloads()]

    def close(self) -> None:
        self.buffer.close()


def gateway(
    path: Path,
    *,
    model: dict[str, Any] | None = None,
    cooldown_s: int = 86400,
    meters: Iterable[Mapping[str, Any]] = (),
    model_file: Path | None = None,
    timezone: str | None = None,
    max_models: int | None = None,
) -> Gateway:
    """A gateway over the buffer file ``path`` (its stored models loaded, as at a start), with
    ``model`` offered when given; ``meters`` is its registry (transformers, customer classes,
    zones); ``max_models`` as the agent setting (None: its default)."""
    buffer = Buffer(path)
    limit = {} if max_models is None else {"max_models": max_models}
    settings = AgentSettings(
        gateway_id="gw1",
        db_path=path,
        model_name="iforest",
        model_public_key=models().public_key,
        alert_cooldown_s=cooldown_s,
        timezone=timezone,
        **limit,
    )
    parts = build_detection(settings, buffer, [dict(m) for m in meters], time.time)
    parts.models.start(model_file)
    if model is not None:
        assert parts.models.offer(json.dumps(model).encode(), "test"), parts.models.error
    intake = Intake(buffer.readings, buffer.meta, Validator(time.time), parts.detector)
    return Gateway(buffer, parts.detector, parts.models, parts.energy, intake)


def write_spool(directory: Path, name: str, readings: list[dict[str, Any]]) -> None:
    """Drop a JSONL file atomically into a spool directory."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{name}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in readings))
    tmp.rename(directory / f"{name}.jsonl")


def normal_history(meters: list[str], k_from: int, k_to: int) -> list[dict[str, Any]]:
    return [reading(m, k) for k in range(k_from, k_to) for m in meters]


class Subscriber:
    """A real MQTT client collecting messages (for tests): ``wait_for`` polls a condition.

    ``session`` gives it a persistent session (fixed client id, clean_start False), so QoS1
    messages published while it is away are kept for it by the broker."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        session: str | None = None,
        host: str = "127.0.0.1",
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        """``tls``: (CA file, certificate, key) of the identity to connect as."""
        import threading

        import paho.mqtt.client as mqtt

        self.topics = topics
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=session or "",
            protocol=mqtt.MQTTv5,
        )
        if tls is not None:
            self.client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.2, 1)
        self.connected = threading.Event()
        self.host, self.port, self.session = host, port, session

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def start(self) -> Subscriber:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if self.session:
            props.SessionExpiryInterval = 600
        self.client.connect(self.host, self.port, clean_start=not self.session, properties=props)
        self.client.loop_start()
        assert self.connected.wait(10), "subscriber could not connect"
        import time

        time.sleep(0.2)  # let the SUBACKs arrive
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def payloads(self, suffix: str = "") -> list[dict[str, Any]]:
        from edge_agent import wire

        with self._lock:
            msgs = list(self.messages)
        out = []
        for topic, payload in msgs:
            if topic.endswith(suffix):
                try:
                    out.append(wire.decode(payload))
                except wire.DecodeError:
                    continue
        return out

    def wait_for(self, cond: Any, timeout: float, what: str) -> None:
        from tests.support.processes import wait_until

        wait_until(cond, timeout, what)

    def last_status(self) -> dict[str, Any] | None:
        statuses = self.payloads("/status")
        return statuses[-1] if statuses else None
