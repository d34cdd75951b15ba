"""Keep the models in service retained on the broker: ``python -m ml keep-published``.

A broker acknowledges a retained message before it writes it to disk (``autosave_interval``); a
broker killed in between, or started on a fresh store, has no model to give a gateway that
connects. This service holds a connection as its own identity, ``svc-models-keeper`` (role
``models``: the broker makes the identity the client id, so sharing ``svc-models`` with
``python -m ml publish`` would have each connection throw the other off), and on every connect
(so after every broker restart) and every ``recheck_s`` it subscribes to ``{root}/models/+``,
reads what the broker retains, and publishes again, retained and QoS 1, each model in service
that the broker has lost: the newest published version of the model set in ``ml.models`` (the
global model and the class models published with it).

Only a topic with nothing retained, or with an older model, gets the model again. A retained
message created later is left alone: a withdrawal (signed with the private key, which this
service does not hold), or a model ``ml publish`` sent a moment before recording it. A gateway
receives a model again only when the broker had lost it (~100 kB over 3G each time). A database
or broker error fails one check, not the service: the next check comes within ``retry_s``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from datetime import datetime
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
        retry_s: float = 30.0,
        settle_s: float = 2.0,
        client_id: str = "svc-models-keeper",
    ) -> None:
        self.dsn = dsn
        self.root = root
        self.set_name = set_name
        self.recheck_s = recheck_s
        self.retry_s = retry_s
        self.failures = 0
        self.settle_s = settle_s
        self.republished = 0
        self.checks = 0
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}  # topic → the retained message, decoded
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
        if not msg.payload:
            return  # an empty retained message: nothing is held
        try:
            obj = wire.decode(bytes(msg.payload), wire.MODEL_LIMITS)
        except wire.DecodeError:
            obj = {}  # unreadable: held, but older than anything
        with self._lock:
            self._held[msg.topic] = obj

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        last, wait_s = time.monotonic(), self.recheck_s
        try:
            while not stop.is_set():
                if self._due.wait(0.5) or time.monotonic() - last >= wait_s:
                    self._due.clear()
                    last, wait_s = time.monotonic(), self.recheck_s
                    if not self.link.connected():
                        continue
                    try:
                        self.check(stop)
                    except (psycopg.Error, OSError) as exc:
                        self.failures += 1
                        wait_s = min(self.retry_s, self.recheck_s)
                        log.warning("check failed (%s): again in %.0f s", exc, wait_s)
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
            if topic in held and not _older(held[topic], message):
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


def _older(held: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the retained message was created before the model in service (an unreadable one
    counts as older)."""
    try:
        return _created(held) < _created(wanted)
    except (KeyError, TypeError, ValueError):
        return True


def _created(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(message["created_at"]))


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
