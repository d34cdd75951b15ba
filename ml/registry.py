"""Model registry and rollout: ``ml.models`` in PostgreSQL, retained ``model.v1`` over MQTT.

Publishing a :class:`~ml.modelset.ModelSet` (``python -m ml publish``), for each member:

1. sign a ``model.v1`` message (``ml.publish``; Ed25519, the private key stays on the central
   side: a file named by ``--key`` / ``$EIOT_MODEL_SIGNING_KEY_FILE``, or
   ``$EIOT_MODEL_SIGNING_KEY``);
2. register it in ``ml.models`` (``central/sql/0003_ml_models.sql``): name, version, class,
   feature names, threshold, scikit-learn offset, training window and metrics, and the signed
   message itself. ``(name, version)`` is immutable: registering the same model again is a no-op
   that returns the message stored the first time (same ``created_at``, same signature), and a
   *different* model under an existing version raises :class:`VersionConflict`;
3. publish the stored message **retained**, QoS 1, on ``{root}/models/{name}`` (default root
   ``eiot/v1``) and wait until the broker has it; then stamp ``published_at``.

A gateway that connects later gets the retained message at once. The payload is the wire's
zlib encoding (first byte 0x01, ``edge_agent.wire.decode`` reads it): an ONNX forest in base64
shrinks to about a third. A model is withdrawn by a signed ``model_withdrawal.v1`` published
retained on its topic (:func:`withdraw`): gateways that hear it drop the model and refuse any
model of that name created before it (an empty retained message is ignored: anybody able to
publish could send one). Publishing a set withdraws the class models of earlier sets it has no
member for (a gateway that missed the withdrawal still stops using them: a class model older than
the global one is stale).

Connection settings come from arguments or the environment, with the same names as the central
settings: ``EIOT_PG_DSN``, ``EIOT_BROKER_HOST``, ``EIOT_BROKER_PORT``, ``EIOT_BROKER_USERNAME``,
``EIOT_BROKER_PASSWORD``, ``EIOT_BROKER_TLS``, ``EIOT_TOPIC_ROOT``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb

from edge_agent import topics, wire
from ml.modelset import Member, ModelSet
from ml.publish import build_model_message, build_withdrawal

log = logging.getLogger(__name__)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/eiot"


class VersionConflict(Exception):
    """A different model is already registered under this name and version."""


class PublishError(Exception):
    """The broker did not take the message."""


@dataclass
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # the broker's CA (else the system's trust store)
    cert_file: str | None = None  # the publisher's identity (svc-models, docs/security.md)
    key_file: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Broker:
        e = os.environ if env is None else env
        values: dict[str, Any] = {
            "host": e.get("EIOT_BROKER_HOST", cls.host),
            "port": int(e.get("EIOT_BROKER_PORT", cls.port)),
            "username": e.get("EIOT_BROKER_USERNAME") or None,
            "password": e.get("EIOT_BROKER_PASSWORD") or None,
            "tls": e.get("EIOT_BROKER_TLS", "").lower() in ("1", "true", "yes"),
            "ca_file": e.get("EIOT_BROKER_CA_FILE") or None,
            "cert_file": e.get("EIOT_BROKER_CERT_FILE") or None,
            "key_file": e.get("EIOT_BROKER_KEY_FILE") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def in_service_version(conn: psycopg.Connection, name: str) -> str | None:
    """The version of the model set ``name`` in service: its newest published version."""
    row = conn.execute(
        "select version from ml.models where name = %s and published_at is not null"
        " order by created_at desc, registered_at desc limit 1",
        (name,),
    ).fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def service_change(conn: psycopg.Connection, name: str) -> Iterator[str | None]:
    """Hold the lock on which version of the set ``name`` is in service (a session advisory lock
    of ``conn``) and yield that version. Whatever changes it takes this lock around its check
    and its publication: a lifecycle run, a rollback (``ml/lifecycle.py``), ``ml publish``."""
    key = f"ml.models/{name}"
    conn.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (key,))
    try:
        yield in_service_version(conn, name)
    finally:
        if not conn.broken:  # a broken connection's session, and the lock with it, is gone
            conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def default_dsn() -> str:
    return os.environ.get("EIOT_PG_DSN", DEFAULT_DSN)


def default_root() -> str:
    return os.environ.get("EIOT_TOPIC_ROOT", topics.DEFAULT_ROOT)


@dataclass
class Published:
    name: str
    version: str
    topic: str
    sha256: str
    registered: bool  # True: a new ml.models row; False: the version existed already
    message: dict[str, Any] = field(repr=False)


# --- PostgreSQL ---------------------------------------------------------------------------

_SIGNED_KEYS = ("sha256", "threshold", "feature_names")


def register(
    conn: psycopg.Connection,
    message: Mapping[str, Any],
    *,
    customer_class: str | None = None,
    variant: str = "global",
    threshold_method: str | None = None,
    score_offset: float | None = None,
    train_start: datetime | str | None = None,
    train_end: datetime | str | None = None,
    train_rows: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a signed ``model.v1`` message in ``ml.models``. Returns the message to publish
    (the one stored, which is the given one for a new version) and whether a row was added.

    Raises :class:`VersionConflict` when the version exists with a different model (sha256,
    threshold or feature names)."""
    msg = dict(message)
    with conn.transaction():
        inserted = conn.execute(
            """
            insert into ml.models (name, version, customer_class, variant, created_at, sha256,
                feature_names, threshold, score_offset, threshold_method, train_start,
                train_end, train_rows, metrics, training, message)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            on conflict (name, version) do nothing
            returning name
            """,
            (
                msg["name"],
                msg["version"],
                customer_class or None,
                variant,
                msg["created_at"],
                msg["sha256"],
                list(msg["feature_names"]),
                float(msg["threshold"]),
                float(-msg["threshold"] if score_offset is None else score_offset),
                threshold_method,
                train_start,
                train_end,
                train_rows,
                Jsonb(dict(metrics or {})),
                Jsonb(dict(training or {})),
                Jsonb(msg),
            ),
        ).fetchone()
        row = conn.execute(
            "select message from ml.models where name = %s and version = %s",
            (msg["name"], msg["version"]),
        ).fetchone()
    assert row is not None
    stored: dict[str, Any] = row[0]
    if inserted is None:
        differs = [k for k in _SIGNED_KEYS if stored.get(k) != msg.get(k)]
        if differs:
            raise VersionConflict(
                f"{msg['name']} version {msg['version']} is already registered with a "
                f"different {', '.join(differs)}: publish under a new version"
            )
    return stored, inserted is not None


def mark_published(conn: psycopg.Connection, name: str, version: str, topic: str) -> None:
    with conn.transaction():
        conn.execute(
            "update ml.models set published_at = now(), topic = %s"
            " where name = %s and version = %s",
            (topic, name, version),
        )


def registered(conn: psycopg.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``ml.models`` (without the message), newest first."""
    cur = conn.execute(
        "select name, version, customer_class, variant, created_at, registered_at, published_at,"
        " topic, sha256, feature_names, threshold, score_offset, threshold_method, train_start,"
        " train_end, train_rows, metrics, training from ml.models"
        " where %s::text is null or name = %s order by created_at desc, name",
        (name, name),
    )
    cols = [d.name for d in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# --- MQTT ---------------------------------------------------------------------------------


def _client(broker: Broker, purpose: str) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"eiot-ml-{purpose}-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
    return client


def _connect(client: mqtt.Client, broker: Broker) -> None:
    done = threading.Event()
    failure: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            failure.append(str(reason))
        done.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not done.wait(broker.timeout_s) or failure:
        client.loop_stop()
        why = failure[0] if failure else "timed out"
        raise PublishError(f"cannot connect to {broker.host}:{broker.port}: {why}")


def publish_retained(topic: str, payload: bytes, broker: Broker) -> None:
    """Publish ``payload`` retained with QoS 1 and wait for the broker's PUBACK."""
    publish(topic, [payload], broker, retain=True)


def publish(topic: str, payloads: Sequence[bytes], broker: Broker, *, retain: bool = False) -> None:
    """Publish each payload with QoS 1 on one connection and wait for every PUBACK."""
    client = _client(broker, "publish")
    _connect(client, broker)
    try:
        sent = [client.publish(topic, payload, qos=1, retain=retain) for payload in payloads]
        for info in sent:
            info.wait_for_publish(broker.timeout_s)
            if not info.is_published():
                raise PublishError(f"no PUBACK for {topic} within {broker.timeout_s} s")
    finally:
        client.disconnect()
        client.loop_stop()


def clear_retained(topic: str, broker: Broker) -> None:
    """Remove the retained message of ``topic`` (an empty retained payload): the broker forgets
    it; gateways ignore it (a withdrawal is :func:`withdraw`)."""
    publish_retained(topic, b"", broker)


def withdraw(
    name: str, private_key: Ed25519PrivateKey, broker: Broker, root: str = topics.DEFAULT_ROOT
) -> dict[str, Any]:
    """Publish a signed withdrawal of model ``name``, retained (late gateways hear it too)."""
    message = build_withdrawal(name, private_key=private_key)
    publish_retained(topics.model(root, name), wire.encode(message, compress=False), broker)
    return message


def read_retained(topic: str, broker: Broker, timeout_s: float | None = None) -> bytes | None:
    """The retained payload of ``topic`` as a new subscriber gets it; None if there is none
    within ``timeout_s``."""
    client = _client(broker, "read")
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    client.on_message = on_message
    _connect(client, broker)
    try:
        client.subscribe(topic, qos=1)
        done.wait(broker.timeout_s if timeout_s is None else timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


# --- the whole rollout --------------------------------------------------------------------


def sign_member(
    model_set: ModelSet, member: Member, private_key: Ed25519PrivateKey
) -> dict[str, Any]:
    return build_model_message(
        member.onnx,
        name=member.name,
        version=model_set.version,
        feature_names=model_set.feature_names,
        threshold=member.threshold,
        private_key=private_key,
        created_at=model_set.created_at,
    )


def publish_model_set(
    model_set: ModelSet,
    private_key: Ed25519PrivateKey,
    *,
    dsn: str,
    broker: Broker,
    root: str = topics.DEFAULT_ROOT,
) -> list[Published]:
    """Sign, register and publish every member of ``model_set`` (see module docstring)."""
    out: list[Published] = []
    training = model_set.training
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        for member in model_set.members:
            message = sign_member(model_set, member, private_key)
            stored, added = register(
                conn,
                message,
                customer_class=member.customer_class or None,
                variant=model_set.variant,
                threshold_method=member.threshold_method,
                score_offset=member.offset,
                train_start=training.get("window_start"),
                train_end=training.get("window_end"),
                train_rows=member.train_rows,
                metrics={**member.metrics, "validation": model_set.validation},
                training=training,
            )
            topic = topics.model(root, member.name)
            publish_retained(topic, wire.encode(stored, compress=True), broker)
            mark_published(conn, member.name, model_set.version, topic)
            out.append(
                Published(member.name, model_set.version, topic, stored["sha256"], added, stored)
            )
        # Class models of an earlier set that this one has no member for: withdraw them (a
        # signed withdrawal), so gateways fall back to the global model for that class.
        names = [m.name for m in model_set.members]
        stale = conn.execute(
            "select distinct name from ml.models where left(name, length(%s) + 1) = %s || '.'"
            " and published_at is not null and not (name = any(%s))",
            (model_set.name, model_set.name, names),
        ).fetchall()
        for (name,) in stale:
            withdraw(name, private_key, broker, root)
            log.info("withdrew %s: the new set has no member for its class", name)
    return out
