"""Keep the models in service retained on the broker: ``python -m ml keep-published``.

A broker acknowledges a retained message before it writes it to disk (``autosave_interval``); a
broker killed in between, or started on a fresh store, has no model to give a gateway that
connects. This service holds a connection (as ``svc-models``), and on every connect (so after
every broker restart) and every ``recheck_s`` it subscribes to ``{root}/models/+``, reads what the
broker retains, and publishes again, retained and QoS 1, each model in service that the broker
does not hold: the newest published version of the model set in ``ml.models`` (the global model
and the class models published with it). What the broker already holds is left alone: a
gateway receives a model again only when the broker had lost it (~100 kB over 3G each time).

Withdrawals are not re-asserted (they are signed with the private key, which this service does
not hold); a gateway that misses one still drops a class model older than the global model.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from edge_agent import topics, wire
from edge_agent.mqtt_link import LinkConfig, MqttLink
from ml.registry import Broker, default_dsn, default_root

log = logging.getLogger(__name__)


def in_service(conn: psycopg.Connection, set_name: str) -> dict[str, dict[str, Any]]:
    """``{model name: signed model.v1 message}`` of the newest published version of the set
    ``set_name`` (its global model and its class models)."""
    row = conn.execute(
        "select version from ml.models where name = %s and published_at is not null "
        "order by created_at desc, version desc limit 1",
        (set_name,),
    ).fetchone()
    if row is None:
        return {}
    return {
        str(name): dict(message)
        for name, message in conn.execute(
            "select name, message from ml.models where version = %s and published_at is not null"
            " and (name = %s or left(name, length(%s) + 1) = %s || '.')",
            (row[0], set_name, set_name, set_name),
        )
    }


class RetainedKeeper:
    """See the module doc. ``settle_s``: how long retained messages are awaited after a
    subscribe (the broker sends them at once; this covers a slow link)."""

    def __init__(
        self,
        dsn: str,
        broker: Broker,
        *,
        root: str = topics.DEFAULT_ROOT,
        set_name: str = "iforest",
        recheck_s: float = 600.0,
        settle_s: float = 2.0,
        client_id: str = "svc-models-keeper",
    ) -> None:
        self.dsn = dsn
        self.root = root
        self.set_name = set_name
        self.recheck_s = recheck_s
        self.settle_s = settle_s
        self.republished = 0
        self.checks = 0
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, str]] = {}  # topic → (version, sha256) retained
        self._due = threading.Event()
        self._filter = topics.model(root, "+")
        config = LinkConfig(
            client_id=client_id,
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=broker.password,
            tls=broker.tls,
            ca_file=_path(broker.ca_file),
            cert_file=_path(broker.cert_file),
            key_file=_path(broker.key_file),
            backoff_max_s=5.0,  # central's own broker: back quickly after a restart
        )
        self.link = MqttLink(config, on_message=self._on_message, on_connect=self._due.set)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            return
        try:
            obj = wire.decode(bytes(msg.payload), wire.MODEL_LIMITS) if msg.payload else {}
        except wire.DecodeError:
            obj = {}
        with self._lock:
            self._held[msg.topic] = (str(obj.get("version", "")), str(obj.get("sha256", "")))

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        last = time.monotonic()
        try:
            while not stop.is_set():
                if self._due.wait(0.5) or time.monotonic() - last >= self.recheck_s:
                    self._due.clear()
                    last = time.monotonic()
                    if self.link.connected():
                        self.check(stop)
        finally:
            self.link.stop()

    def check(self, stop: threading.Event) -> int:
        """Read what the broker retains and publish what it lacks; returns how many."""
        with self._lock:
            self._held.clear()
        self.link.client.subscribe(self._filter, qos=1)  # retained messages come again
        stop.wait(self.settle_s)
        with psycopg.connect(self.dsn, connect_timeout=5, autocommit=True) as conn:
            wanted = in_service(conn, self.set_name)
        with self._lock:
            held = dict(self._held)
        sent = 0
        for name, message in sorted(wanted.items()):
            topic = topics.model(self.root, name)
            if held.get(topic) == (message["version"], message["sha256"]):
                continue
            if self.link.publish(topic, wire.encode(message, compress=True), qos=1, retain=True):
                sent += 1
                log.warning(
                    "the broker lacked %s %s: published again, retained", name, message["version"]
                )
        self.republished += sent
        self.checks += 1
        if not sent:
            log.info("the broker holds every model in service (%d)", len(wanted))
        return sent


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", default=None, help="PostgreSQL DSN (default $EIOT_PG_DSN)")
    parser.add_argument("--root", default=None, help="topic root (default $EIOT_TOPIC_ROOT)")
    parser.add_argument("--name", default="iforest", help="model set name in ml.models")
    parser.add_argument(
        "--recheck", type=float, default=600.0, help="seconds between checks (and on connect)"
    )


def command(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT."""
    keeper = RetainedKeeper(
        args.dsn or default_dsn(),
        Broker.from_env(),
        root=args.root or default_root(),
        set_name=args.name,
        recheck_s=args.recheck,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    keeper.run(stop)
    return 0
