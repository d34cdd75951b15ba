"""``central ingest``: the MQTT → PostgreSQL worker.

Subscribes (shared subscription, so several workers split the load) to every gateway's readings,
alerts and status topics with manual acknowledgement. Alerts (``alert.v1``) go to ``raw.alerts``
once per ``alert_id`` (agents resend until PUBACK, so duplicates are normal); a bad alert payload
is quarantined whole, like a bad batch. For each message: store in one transaction,
commit, publish ``ack.v1`` to the gateway, and only then PUBACK the message to the broker. A
worker killed anywhere in between loses nothing: the broker or the agent delivers again and the
batch ledger answers with the same ack.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from central import store
from central.db import connect
from central.settings import CentralSettings
from edge_agent import failpoints, topics, wire
from edge_agent.backoff import Backoff
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.vocabulary import ID_PATTERN

log = logging.getLogger(__name__)


@dataclass
class Work:
    """A received message, decoded and validated; ``item`` None for a status message."""

    topic: str
    payload: bytes
    gateway_id: str | None
    item: store.Prepared | store.BadMessage | AlertItem | None


@dataclass
class AlertItem:
    alert: wire.Alert


_ID = re.compile(ID_PATTERN)


class IngestWorker:
    def __init__(self, settings: CentralSettings) -> None:
        self.s = settings
        self.counters: Counter[str] = Counter()
        self._inbox: queue.SimpleQueue[tuple[mqtt.MQTTMessage, Work]] = queue.SimpleQueue()
        root = settings.topic_root
        group = settings.share_group or None
        self.link = MqttLink(
            LinkConfig(
                client_id=f"eiot-ingest-{settings.worker_id}",
                host=settings.broker_host,
                port=settings.broker_port,
                session_expiry_s=settings.session_expiry_s,
                username=settings.broker_username,
                password=(
                    settings.broker_password.get_secret_value()
                    if settings.broker_password
                    else None
                ),
                tls=settings.broker_tls,
                subscriptions=[
                    (topics.shared(group, f"{root}/gw/+/readings"), 1),
                    (topics.shared(group, f"{root}/gw/+/status"), 1),
                    (topics.shared(group, f"{root}/gw/+/alerts"), 1),
                ],
                manual_ack=True,
                receive_maximum=settings.receive_maximum,
            ),
            on_message=self._on_message,
        )
        self._conn: psycopg.Connection | None = None
        self._db_backoff = Backoff(0.2, settings.db_retry_max_s)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            work = self.prepare(msg.topic, bytes(msg.payload))
        except Exception as exc:  # a bug must not stop the network thread
            log.exception("cannot prepare message on %s", msg.topic)
            reason = f"internal_error: {type(exc).__name__}: {exc}"[:300]
            work = Work(msg.topic, bytes(msg.payload), None, store.BadMessage(reason))
        self._inbox.put((msg, work))

    # --- loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info(
            "ingest worker %s: broker %s:%s, share group %r",
            self.s.worker_id,
            self.s.broker_host,
            self.s.broker_port,
            self.s.share_group,
        )
        last_report = time.monotonic()
        reported: Counter[str] = Counter()
        try:
            while not stop.is_set():
                try:
                    msg, work = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    self.process(msg, work, stop)
                if time.monotonic() - last_report > 10 and self.counters != reported:
                    last_report = time.monotonic()
                    reported = self.counters.copy()
                    log.info("counters %s", dict(sorted(self.counters.items())))
        finally:
            # what this run did (complete: only this thread counts), for the operator and for
            # tests that stop a worker to see its share
            log.info("final counters %s", dict(sorted(self.counters.items())))
            self.link.stop()
            if self._conn is not None:
                self._conn.close()

    def process(self, msg: mqtt.MQTTMessage, work: Work, stop: threading.Event) -> None:
        """Handle one message until it is stored (retrying through database outages)."""
        while not stop.is_set():
            try:
                conn = self._connection()
                ack_topic, outcome = self.store_work(conn, work)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._drop_connection()
                delay = self._db_backoff.next_delay()
                self.counters["db_retries"] += 1
                log.warning(
                    "database unavailable (%s); retry in %.1fs", str(exc).strip()[:120], delay
                )
                stop.wait(delay)
                continue
            except Exception as exc:  # a bug must not stop the worker: keep the message, say why
                log.exception("cannot store message on %s", msg.topic)
                self.counters["internal_errors"] += 1
                try:
                    conn = self._connection()
                    if conn.info.transaction_status:
                        conn.rollback()
                    bad = store.BadMessage(f"internal_error: {type(exc).__name__}: {exc}"[:300])
                    store.reject(conn, bytes(msg.payload), bad, msg.topic, None)
                except psycopg.Error:
                    self._drop_connection()
                    stop.wait(self._db_backoff.next_delay())
                    continue
                ack_topic, outcome = None, None
            self._db_backoff.reset()
            if outcome is not None and outcome.ack is not None and ack_topic:
                failpoints.hit("ingest.after_commit")
                if not self.link.publish(ack_topic, wire.encode_model(outcome.ack, compress=False)):
                    return  # no PUBACK either: the agent resends, the ledger answers
                self.counters["acks_sent"] += 1
            self.link.ack(msg.mid, msg.qos)
            return

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.s.pg_dsn)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    # --- one message ----------------------------------------------------------------------

    def prepare(self, topic: str, payload: bytes) -> Work:
        """Decode and validate one message: CPU only, no database (runs on the network thread,
        so it overlaps with the main thread's database work)."""
        gateway_id = topics.gateway_of(topic, self.s.topic_root)
        if topic.endswith("/status"):
            return Work(topic, payload, gateway_id, None)
        if topic.endswith("/alerts"):
            return Work(topic, payload, gateway_id, self._parse_alert(payload, gateway_id))
        parsed = self._parse_batch(payload, gateway_id)
        if isinstance(parsed, store.BadMessage):
            return Work(topic, payload, gateway_id, parsed)
        return Work(topic, payload, gateway_id, store.prepare(parsed, f"mqtt:{topic}"))

    def handle(
        self, conn: psycopg.Connection, topic: str, payload: bytes
    ) -> tuple[str | None, store.Outcome | None]:
        """Prepare and store one message (see :meth:`store_work`)."""
        return self.store_work(conn, self.prepare(topic, payload))

    def store_work(
        self, conn: psycopg.Connection, work: Work
    ) -> tuple[str | None, store.Outcome | None]:
        """Store one prepared message. Returns (ack topic, outcome). Raises only on database
        outages."""
        topic, payload, gateway_id = work.topic, work.payload, work.gateway_id
        if work.item is None:
            self._store_status(conn, topic, gateway_id, payload)
            return None, None
        if isinstance(work.item, AlertItem):
            try:
                new = store.store_alert(conn, work.item.alert)
            except psycopg.DataError as exc:  # a value PostgreSQL refuses (NaN in features...)
                bad = store.BadMessage(f"store_error: {exc}".strip()[:300])
                work = Work(topic, payload, gateway_id, bad)
            else:
                self.counters["alerts_stored" if new else "alerts_duplicate"] += 1
                return None, None
        if topic.endswith("/alerts"):  # a bad alert: quarantined whole, nobody to answer
            assert isinstance(work.item, store.BadMessage)
            self.counters["alerts_quarantined"] += 1
            log.warning("quarantined alert on %s: %s", topic, work.item.reason[:200])
            store.reject(conn, payload, work.item, topic, gateway_id)
            return None, None
        ack_topic = topics.ack(self.s.topic_root, gateway_id) if gateway_id else None
        if isinstance(work.item, store.BadMessage):
            bad = work.item
            self.counters[f"rejected_{bad.reason.split(':')[0]}"] += 1
            log.warning("quarantined message on %s: %s", topic, bad.reason[:200])
            return ack_topic, store.reject(conn, payload, bad, topic, gateway_id)
        assert isinstance(work.item, store.Prepared)
        try:
            outcome = store.store_batch(conn, work.item)
        except psycopg.DataError as exc:  # a value PostgreSQL refuses that validation let by
            bad = store.BadMessage(f"store_error: {exc}".strip()[:300], work.item.env.batch_id)
            return ack_topic, store.reject(conn, payload, bad, topic, gateway_id)
        ack = outcome.ack
        assert ack is not None
        if outcome.replay:
            self.counters["batches_replayed"] += 1
            log.info(
                "batch %s of %s delivered again: answered with the stored ack",
                ack.batch_id,
                gateway_id,
            )
        else:
            self.counters["batches_stored"] += 1
            self.counters["readings_inserted"] += ack.inserted
            self.counters["readings_duplicate"] += ack.duplicates
            self.counters["readings_conflict"] += ack.conflicts
            self.counters["quarantined"] += ack.quarantined
        failpoints.hit("ingest.before_ack")
        return ack_topic, outcome

    def _parse_batch(
        self, payload: bytes, gateway_id: str | None
    ) -> wire.BatchEnvelope | store.BadMessage:
        if gateway_id is None:
            return store.BadMessage("bad_topic")
        if len(payload) > self.s.max_message_bytes:
            return store.BadMessage(f"oversize: {len(payload)} bytes")
        try:
            obj = wire.decode(payload, self.s.max_inflated_bytes)
        except wire.DecodeError as exc:
            return store.BadMessage(str(exc))
        batch_id = obj.get("batch_id")
        if not isinstance(batch_id, str) or not _valid_id(batch_id):
            batch_id = None
        schema = wire.schema_of(obj)
        if schema not in wire.READINGS_SCHEMAS:
            return store.BadMessage(f"unknown_schema: {schema[:40]!r}", batch_id)
        try:
            env = wire.BatchEnvelope.model_validate(obj)
        except ValidationError as exc:
            return store.BadMessage("invalid_envelope: " + wire.explain(exc), batch_id)
        if env.gateway_id != gateway_id:
            return store.BadMessage(
                f"gateway_mismatch: topic {gateway_id}, payload {env.gateway_id}", batch_id
            )
        return env

    def _parse_alert(self, payload: bytes, gateway_id: str | None) -> AlertItem | store.BadMessage:
        if gateway_id is None:
            return store.BadMessage("bad_topic")
        if len(payload) > self.s.max_message_bytes:
            return store.BadMessage(f"oversize: {len(payload)} bytes")
        try:
            obj = wire.decode(payload, self.s.max_message_bytes)
        except wire.DecodeError as exc:
            return store.BadMessage(str(exc))
        schema = wire.schema_of(obj)
        if schema != "alert.v1":
            return store.BadMessage(f"unknown_schema: {schema[:40]!r}")
        try:
            alert = wire.Alert.model_validate(obj)
        except ValidationError as exc:
            return store.BadMessage("invalid_alert: " + wire.explain(exc))
        if alert.gateway_id != gateway_id:
            return store.BadMessage(
                f"gateway_mismatch: topic {gateway_id}, payload {alert.gateway_id}"
            )
        return AlertItem(alert)

    def _store_status(
        self, conn: psycopg.Connection, topic: str, gateway_id: str | None, payload: bytes
    ) -> None:
        reason = None
        status: wire.Status | None = None
        try:
            status = wire.Status.model_validate(wire.decode(payload, self.s.max_message_bytes))
        except wire.DecodeError as exc:
            reason = str(exc)
        except ValidationError as exc:
            reason = "invalid_status: " + wire.explain(exc)
        if status is not None and status.gateway_id != gateway_id:
            reason = f"gateway_mismatch: topic {gateway_id}, payload {status.gateway_id}"
        if reason is not None or status is None:
            self.counters["status_quarantined"] += 1
            store.reject(conn, payload, store.BadMessage(reason or "invalid_status"), topic, None)
            return
        try:
            with conn.transaction():
                conn.execute(
                    "insert into raw.gateway_status (gateway_id, sent_at, state, status) "
                    "values (%s, %s, %s, %s) on conflict do nothing",
                    (status.gateway_id, status.sent_at, status.state, Jsonb(status.to_json_dict())),
                )
        except psycopg.DataError as exc:  # e.g. a NUL inside a string: PostgreSQL refuses it
            self.counters["status_quarantined"] += 1
            bad = store.BadMessage(f"store_error: {exc}".strip()[:300])
            store.reject(conn, payload, bad, topic, None)
            return
        self.counters["status_stored"] += 1


def _valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None
