"""``central ingest``: the MQTT → PostgreSQL worker.

Subscribes (shared subscription, so several workers split the load) to every gateway's readings,
alerts and status topics with manual acknowledgement. Alerts (``alert.v1``) go to ``raw.alerts``
once per ``alert_id`` (agents resend until central answers, so duplicates are normal); a bad alert
payload is quarantined whole, like a bad batch. For each message: store in one transaction,
commit, publish the answer to the gateway (``ack.v2`` for a batch, ``alert_ack.v1`` for an
alert), and only then PUBACK the message to the broker. A worker
killed anywhere in between loses nothing: the broker or the agent delivers again and the batch
ledger answers with the same ack.

Hostile input costs bounded work: a message is refused by its size, then by its inflated size
and the number of JSON values it holds before it is parsed (``wire.BATCH_LIMITS``); a message
that killed the worker twice is set aside (``central.poison``). Every refusal of a readings
message that names its gateway and batch is answered with a rejecting ack, so nothing is resent
forever. Whole messages kept in quarantine are bounded, and each gateway has a budget of bytes
of quarantined excerpts per hour.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from central import store
from central.db import connect
from central.ingest_metrics import IngestMetrics
from central.poison import PoisonGuard
from central.roles import is_superuser
from central.settings import CentralSettings
from edge_agent import failpoints, topics, wire
from edge_agent.alerts import alert_id
from edge_agent.backoff import Backoff
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.vocabulary import (
    CENTRAL_ALERT_KINDS,
    ID_PATTERN,
    SERVICE_PREFIX,
    quarantine_reason,
)

log = logging.getLogger(__name__)


@dataclass
class Work:
    """A received message, decoded and validated; ``item`` None for a status message."""

    topic: str
    payload: bytes
    gateway_id: str | None
    item: store.Prepared | store.BadMessage | AlertItem | None
    sha256: str = ""


@dataclass
class AlertItem:
    alert: wire.Alert


_ID = re.compile(ID_PATTERN)
_BATCH_ID = re.compile(rb'"batch_id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})"')
_ALERT_ID = re.compile(r"[0-9a-f]{32}")  # edge_agent.alerts.alert_id
_ALERT_ID_FIELD = re.compile(rb'"alert_id"\s*:\s*"([0-9a-f]{32})"')


class QuarantineBudget:
    """Bytes each gateway may add to the quarantine per hour (see :meth:`IngestWorker._reject`
    for what happens beyond it: nothing is dropped silently)."""

    def __init__(self, bytes_per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bytes_per_hour = bytes_per_hour
        self.clock = clock
        self._used: dict[str | None, tuple[float, int]] = {}

    def take(self, gateway_id: str | None, size: int) -> bool:
        now = self.clock()
        start, used = self._used.get(gateway_id, (now, 0))
        if now - start >= 3600:
            start, used = now, 0
        if used + size > self.bytes_per_hour:
            self._used[gateway_id] = (start, used)
            return False
        self._used[gateway_id] = (start, used + size)
        return True


class IngestWorker:
    def __init__(self, settings: CentralSettings) -> None:
        self.s = settings
        self.counters: Counter[str] = Counter()
        self._inbox: queue.SimpleQueue[tuple[mqtt.MQTTMessage, Work | None]] = queue.SimpleQueue()
        root = settings.topic_root
        group = settings.share_group or None
        self.link = MqttLink(
            LinkConfig.of(
                settings,
                f"eiot-ingest-{settings.worker_id}",
                session_expiry_s=settings.session_expiry_s,
                subscriptions=[
                    (topics.shared(group, f"{root}/gw/+/readings"), 1),
                    (topics.shared(group, f"{root}/gw/+/status"), 1),
                    (topics.shared(group, f"{root}/gw/+/alerts"), 1),
                ],
                manual_ack=True,
                receive_maximum=settings.receive_maximum,
                backoff_min_s=0.2,
                backoff_max_s=settings.broker_backoff_max_s,
            ),
            on_message=self._on_message,
        )
        self.batch_limits = replace(wire.BATCH_LIMITS, max_bytes=settings.max_inflated_bytes)
        self.small_limits = wire.Limits(max_bytes=min(settings.max_message_bytes, 1 << 20))
        self.window = store.Window(
            earliest=datetime.combine(settings.earliest_reading, datetime.min.time(), UTC),
            max_future_s=settings.max_future_s,
        )
        self.policy = store.QuarantinePolicy(settings.quarantine_payload_max_bytes)
        self.budget = QuarantineBudget(settings.quarantine_budget_bytes_per_hour)
        self.guard = PoisonGuard(settings.state_dir, f"ingest-{settings.worker_id}")
        self._conn: psycopg.Connection | None = None
        self._db_backoff = Backoff(0.2, settings.db_retry_max_s)
        self.metrics = IngestMetrics(settings.worker_id)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread: decode and validate here, overlapping the main thread's database
        work; while a death is unexplained the main thread decodes, one message at a time."""
        if self.guard.careful:
            self._inbox.put((msg, None))
            return
        self._inbox.put((msg, self._prepare_guarded(msg.topic, bytes(msg.payload))))

    def _prepare_guarded(self, topic: str, payload: bytes) -> Work:
        sha = hashlib.sha256(payload).hexdigest()
        if self.guard.is_poison(sha):
            return self._poison(topic, payload, sha)
        self.guard.enter("decoding", sha)
        try:
            failpoints.hit("ingest.decoding")
            work = self.prepare(topic, payload)
        except Exception as exc:  # a bug must not stop the network thread
            log.exception("cannot prepare message on %s", topic)
            reason = quarantine_reason("internal_error", f"{type(exc).__name__}: {exc}")[:300]
            work = Work(topic, payload, self._gateway(topic), self._bad(reason, payload, topic))
        finally:
            self.guard.leave("decoding")
        work.sha256 = sha
        return work

    def _poison(self, topic: str, payload: bytes, sha: str) -> Work:
        self.counters["poison_messages"] += 1
        deaths = self.guard.deaths(sha)
        log.error("message %s on %s killed the worker %d times: set aside", sha[:16], topic, deaths)
        reason = quarantine_reason(
            "poison_message", f"the ingest worker died {deaths} times while handling it"
        )
        return Work(topic, payload, self._gateway(topic), self._bad(reason, payload, topic), sha)

    # --- loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if self.s.ingest_metrics_port is not None:
            port = self.metrics.serve(self.s.ingest_metrics_host, self.s.ingest_metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.s.ingest_metrics_host, port)
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
                    if work is None:  # careful: decoded here, alone
                        work = self._prepare_guarded(msg.topic, bytes(msg.payload))
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
            self.metrics.close()
            if self._conn is not None:
                self._conn.close()

    def process(self, msg: mqtt.MQTTMessage, work: Work, stop: threading.Event) -> None:
        """Handle one message until it is stored (retrying through database outages)."""
        sha = work.sha256 or hashlib.sha256(work.payload).hexdigest()
        self.guard.enter("storing", sha)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    conn = self._connection()
                    ack_topic, outcome = self.store_work(conn, work)
                except Exception as exc:
                    if _database_cannot_take(exc):
                        # Unreachable, read-only after a failover, a grant or a column missing
                        # after a deploy: nothing is acked (a rejected ack would let the agent
                        # drop good readings); the same message is retried with backoff.
                        self._drop_connection()
                        delay = self._db_backoff.next_delay()
                        self.counters["db_retries"] += 1
                        log.warning(
                            "database unavailable (%s: %s); retry in %.1fs",
                            type(exc).__name__,
                            str(exc).strip()[:160],
                            delay,
                        )
                        stop.wait(delay)
                        continue
                    # A bug must not stop the worker: the message is quarantined with the reason
                    # (its bytes kept) and answered. If even that fails, back off between tries.
                    log.exception("cannot store message on %s", msg.topic)
                    self.counters["internal_errors"] += 1
                    failures += 1
                    if failures > 1:
                        stop.wait(self._db_backoff.next_delay())
                    bug = f"{type(exc).__name__}: {exc}"
                    reason = quarantine_reason("internal_error", bug)[:300]
                    work = Work(
                        work.topic,
                        work.payload,
                        work.gateway_id,
                        self._bad(reason, work.payload, work.topic),
                        sha,
                    )
                    try:
                        conn = self._connection()
                        if conn.info.transaction_status:
                            conn.rollback()
                    except psycopg.Error:
                        self._drop_connection()
                    continue
                self._db_backoff.reset()
                if outcome is not None and outcome.ack is not None and ack_topic:
                    failpoints.hit("ingest.after_commit")
                    ack = wire.encode_model(outcome.ack, compress=False)
                    if not self.link.publish(ack_topic, ack):
                        self.metrics.unpublished()
                        return  # no PUBACK either: the agent resends, the ledger answers
                    self.counters["acks_sent"] += 1
                    if msg.timestamp > 0:  # paho's time.monotonic() at arrival
                        self.metrics.answered(time.monotonic() - msg.timestamp)
                self.link.ack(msg.mid, msg.qos)
                self.guard.settled(sha)
                return
        finally:
            self.guard.leave("storing")

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = connect(self.s.pg_dsn)
            superuser = self.s.profile == "production" and is_superuser(conn)
            conn.rollback()  # no transaction left open: the store's own ones must commit
            if superuser:
                # Treated as an unusable database: nothing is stored or acked (the agents keep
                # their readings) until the DSN names the ingest's own login.
                conn.close()
                self.counters["db_refused_superuser"] += 1
                raise psycopg.OperationalError(
                    "refused: EIOT_PG_DSN connects as a superuser; production ingest uses its "
                    "own login (central db login --role eiot_ingest)"
                )
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    # --- one message ----------------------------------------------------------------------

    def _gateway(self, topic: str) -> str | None:
        """The gateway a topic names, if it can be one (services never are)."""
        gateway_id = topics.gateway_of(topic, self.s.topic_root)
        if gateway_id is None or not _valid_id(gateway_id):
            return None
        return None if gateway_id.startswith(SERVICE_PREFIX) else gateway_id

    def _bad(self, reason: str, payload: bytes, topic: str = "") -> store.BadMessage:
        """A refusal that still names the batch (or, on an alerts topic, the alert) when its id
        can be read from the first bytes (inflated a little, never whole): the agent gets a
        rejecting answer, not silence, and stops resending."""
        if topic.endswith("/alerts"):
            return store.BadMessage(reason, alert_id=_peek(payload, _ALERT_ID_FIELD))
        return store.BadMessage(reason, _peek(payload, _BATCH_ID))

    def prepare(self, topic: str, payload: bytes) -> Work:
        """Decode and validate one message: CPU only, no database."""
        gateway_id = self._gateway(topic)
        if topic.endswith("/status"):
            return Work(topic, payload, gateway_id, None)
        if topic.endswith("/alerts"):
            return Work(topic, payload, gateway_id, self._parse_alert(payload, gateway_id))
        parsed = self._parse_batch(payload, gateway_id)
        if isinstance(parsed, store.BadMessage):
            return Work(topic, payload, gateway_id, parsed)
        try:
            prepared = store.prepare(parsed, f"mqtt:{topic}", payload, self.window)
        except Exception as exc:  # a bug: the batch is named, the agent gets its answer
            log.exception("cannot validate batch %s on %s", parsed.batch_id, topic)
            reason = quarantine_reason("internal_error", f"{type(exc).__name__}: {exc}")[:300]
            return Work(topic, payload, gateway_id, store.BadMessage(reason, parsed.batch_id))
        return Work(topic, payload, gateway_id, prepared)

    def handle(
        self, conn: psycopg.Connection, topic: str, payload: bytes
    ) -> tuple[str | None, store.Outcome | store.AlertOutcome | None]:
        """Prepare and store one message (see :meth:`store_work`)."""
        return self.store_work(conn, self.prepare(topic, payload))

    def _reject(
        self,
        conn: psycopg.Connection,
        payload: bytes,
        bad: store.BadMessage,
        topic: str,
        gateway_id: str | None,
    ) -> store.Outcome:
        """Quarantine a whole message, within the gateway's hourly budget.

        A message that names a batch and its gateway is answered ``rejected``, and the agent
        then lets those readings go: its bytes are kept whole (the only copy left; at most
        ``max_message_bytes``). Over the budget such a batch is not answered now (``Outcome``
        without an ack): the agent sends it again after its ack timeout. Any other message
        keeps its bytes up to ``quarantine_payload_max_bytes``, else an excerpt; over the budget
        its reason, size and digest only."""
        if gateway_id is not None and bad.batch_id is not None:
            if not self.budget.take(gateway_id, len(payload)):
                self.counters["rejections_deferred"] += 1
                return store.Outcome(None)
            whole = store.QuarantinePolicy(payload_max_bytes=len(payload))
            return store.reject(conn, payload, bad, topic, gateway_id, whole)
        policy = self.policy
        if not self.budget.take(gateway_id, policy.cost(len(payload))):
            self.counters["quarantine_over_budget"] += 1
            policy = store.BARE
        return store.reject(conn, payload, bad, topic, gateway_id, policy)

    def store_work(
        self, conn: psycopg.Connection, work: Work
    ) -> tuple[str | None, store.Outcome | store.AlertOutcome | None]:
        """Store one prepared message. Returns (ack topic, outcome). Raises only on database
        outages."""
        topic, payload, gateway_id = work.topic, work.payload, work.gateway_id
        if work.item is None:
            self._store_status(conn, topic, gateway_id, payload)
            return None, None
        ack_topic = topics.ack(self.s.topic_root, gateway_id) if gateway_id else None
        if isinstance(work.item, AlertItem):
            aid = work.item.alert.alert_id
            try:
                new = store.store_alert(conn, work.item.alert)
            except store.ForeignMeter as exc:
                work = Work(topic, payload, gateway_id, store.BadMessage(str(exc), alert_id=aid))
            except psycopg.DataError as exc:  # a value PostgreSQL refuses (NaN in features...)
                bad = store.BadMessage(
                    quarantine_reason("store_error", str(exc).strip())[:300], alert_id=aid
                )
                work = Work(topic, payload, gateway_id, bad)
            else:
                self.counters["alerts_stored" if new else "alerts_duplicate"] += 1
                return ack_topic, store.AlertOutcome(wire.AlertAck(alert_id=aid, status="stored"))
        if topic.endswith("/alerts"):  # a bad alert: quarantined whole, answered if addressable
            refused = work.item
            assert isinstance(refused, store.BadMessage)
            self.counters["alerts_quarantined"] += 1
            log.warning("quarantined alert on %s: %s", topic, refused.reason[:200])
            self._reject(conn, payload, refused, topic, gateway_id)
            if refused.alert_id is None or ack_topic is None:
                return None, None
            answer = wire.AlertAck(
                # the reason's code only: its detail may name another gateway's meters
                alert_id=refused.alert_id,
                status="rejected",
                reason=refused.reason.split(":")[0][:300],
            )
            return ack_topic, store.AlertOutcome(answer)
        if isinstance(work.item, store.BadMessage):
            bad = work.item
            self.counters[f"rejected_{bad.reason.split(':')[0]}"] += 1
            log.warning("quarantined message on %s: %s", topic, bad.reason[:200])
            return ack_topic, self._reject(conn, payload, bad, topic, gateway_id)
        assert isinstance(work.item, store.Prepared)
        assert gateway_id is not None  # a batch is prepared only from a gateway's topic
        # Readings quarantined one by one are acked away too: they count against the budget,
        # and a batch over it is answered later (the agent resends it), not stored now.
        quarantined = sum(len(q[0]) for q in work.item.quarantine)
        if quarantined and not self.budget.take(gateway_id, quarantined):
            self.counters["batches_deferred"] += 1
            log.warning("gateway %s is over its quarantine budget: batch deferred", gateway_id)
            return ack_topic, store.Outcome(None)
        gw = gateway_id
        try:
            outcome = store.store_batch(
                conn, work.item, policy=self.policy, afford=lambda n: self.budget.take(gw, n)
            )
        except psycopg.DataError as exc:  # a value PostgreSQL refuses that validation let by
            bad = store.BadMessage(
                quarantine_reason("store_error", str(exc).strip())[:300], work.item.env.batch_id
            )
            return ack_topic, self._reject(conn, payload, bad, topic, gateway_id)
        ack = outcome.ack
        assert ack is not None
        if outcome.conflict:
            self.counters["batch_conflicts"] += 1
            log.error("batch %s of %s: %s", ack.batch_id, gateway_id, ack.reason)
        elif outcome.replay:
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
            return store.BadMessage(quarantine_reason("bad_topic"))
        if len(payload) > self.s.max_message_bytes:
            return self._bad(quarantine_reason("oversize", f"{len(payload)} bytes"), payload)
        try:
            obj = wire.decode(payload, self.batch_limits)
        except wire.DecodeError as exc:
            return self._bad(str(exc), payload)
        batch_id = obj.get("batch_id")
        if not isinstance(batch_id, str) or not _valid_id(batch_id):
            batch_id = None
        schema = wire.schema_of(obj)
        if schema not in wire.READINGS_SCHEMAS:
            return store.BadMessage(
                quarantine_reason("unknown_schema", repr(schema[:40])), batch_id
            )
        try:
            env = wire.BatchEnvelope.model_validate(obj)
        except ValidationError as exc:
            return store.BadMessage(
                quarantine_reason("invalid_envelope", wire.explain(exc)), batch_id
            )
        if env.gateway_id != gateway_id:
            return store.BadMessage(
                quarantine_reason(
                    "gateway_mismatch", f"topic {gateway_id}, payload {env.gateway_id}"
                ),
                batch_id,
            )
        return env

    def _parse_alert(self, payload: bytes, gateway_id: str | None) -> AlertItem | store.BadMessage:
        if gateway_id is None:
            return store.BadMessage(quarantine_reason("bad_topic"))
        try:
            obj = wire.decode(payload, self.small_limits)
        except wire.DecodeError as exc:
            return store.BadMessage(str(exc), alert_id=_peek(payload, _ALERT_ID_FIELD))
        # the id that addresses the rejecting answer, when the alert is unreadable otherwise
        aid = obj.get("alert_id")
        aid = aid if isinstance(aid, str) and _ALERT_ID.fullmatch(aid) else None
        schema = wire.schema_of(obj)
        if schema != "alert.v1":
            return store.BadMessage(
                quarantine_reason("unknown_schema", repr(schema[:40])), alert_id=aid
            )
        try:
            alert = wire.Alert.model_validate(obj)
        except ValidationError as exc:
            return store.BadMessage(
                quarantine_reason("invalid_alert", wire.explain(exc)), alert_id=aid
            )
        if alert.gateway_id != gateway_id:
            return store.BadMessage(
                quarantine_reason(
                    "gateway_mismatch", f"topic {gateway_id}, payload {alert.gateway_id}"
                ),
                alert_id=aid,
            )
        if alert.kind in CENTRAL_ALERT_KINDS:
            return store.BadMessage(
                quarantine_reason("reserved_kind", f"{alert.kind} is raised by central only"),
                alert_id=aid,
            )
        return AlertItem(alert)

    def _store_status(
        self, conn: psycopg.Connection, topic: str, gateway_id: str | None, payload: bytes
    ) -> None:
        reason = None
        status: wire.Status | None = None
        if gateway_id is None:
            reason = quarantine_reason("bad_topic")
        else:
            try:
                status = wire.Status.model_validate(wire.decode(payload, self.small_limits))
            except wire.DecodeError as exc:
                reason = str(exc)
            except ValidationError as exc:
                reason = quarantine_reason("invalid_status", wire.explain(exc))
        if status is not None and status.gateway_id != gateway_id:
            reason = quarantine_reason(
                "gateway_mismatch", f"topic {gateway_id}, payload {status.gateway_id}"
            )
        if reason is not None or status is None:
            self.counters["status_quarantined"] += 1
            bad = store.BadMessage(reason or quarantine_reason("invalid_status"))
            self._reject(conn, payload, bad, topic, gateway_id)
            return
        try:
            with conn.transaction():
                conn.execute(
                    "insert into raw.gateway_status (gateway_id, sent_at, state, status) "
                    "values (%s, %s, %s, %s) on conflict do nothing",
                    (status.gateway_id, status.sent_at, status.state, Jsonb(status.to_json_dict())),
                )
                if _scores_nothing(status):
                    self._scoring_off(conn, status)
        except psycopg.DataError as exc:  # e.g. a NUL inside a string: PostgreSQL refuses it
            self.counters["status_quarantined"] += 1
            bad = store.BadMessage(quarantine_reason("store_error", str(exc).strip())[:300])
            self._reject(conn, payload, bad, topic, gateway_id)
            return
        self.counters["status_stored"] += 1

    def _scoring_off(self, conn: psycopg.Connection, status: wire.Status) -> None:
        """A gateway online without a model raises a ``scoring_off`` alert, once per gateway
        and UTC day by central's clock (its id is deterministic), with the gateway's own
        reason."""
        day = int(time.time()) // 86400 * 86400
        aid = alert_id("scoring_off", status.gateway_id, day)
        cur = conn.execute(
            "insert into raw.alerts (alert_id, gateway_id, meter_id, ts, kind, detail) "
            "values (%s, %s, %s, %s, 'scoring_off', %s) "
            "on conflict (gateway_id, alert_id) do nothing",
            (
                aid,
                status.gateway_id,
                status.gateway_id,
                datetime.fromtimestamp(day, UTC),
                wire.printable(status.model_error or "no model in use")[:500],
            ),
        )
        if cur.rowcount:
            self.counters["alerts_scoring_off"] += 1
            log.warning("gateway %s scores nothing: %s", status.gateway_id, status.model_error)


def _database_cannot_take(exc: Exception) -> bool:
    """A database error that says nothing about the message (connection, server state,
    privileges, schema), as opposed to a value the database refuses (data, integrity)."""
    return isinstance(exc, psycopg.Error) and not isinstance(
        exc, (psycopg.DataError, psycopg.IntegrityError)
    )


def _scores_nothing(status: wire.Status) -> bool:
    return status.state == "online" and not status.models and status.model is None


def _valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _peek(payload: bytes, field: re.Pattern[bytes], window: int = 4096) -> str | None:
    """An id ``field`` finds in the first bytes of a message (plain or compressed)."""
    head = payload[:window]
    if payload[:1] == wire.ZLIB_HEADER:
        try:
            head = zlib.decompressobj().decompress(payload[1:], window)
        except zlib.error:
            return None
    match = field.search(head)
    return match.group(1).decode() if match else None
