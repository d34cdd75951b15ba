"""The agent's main loop: sources → (scoring) → buffer → sync, acks back in, alerts and status
out, models in.

One thread owns the buffer (this loop); MQTT network threads only put messages on queues.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge_agent import status, topics, wire
from edge_agent.alerts import AlertOutbox, Cooldown
from edge_agent.buffer import Buffer, BufferFull, is_full
from edge_agent.buffer.salvage import open_checked
from edge_agent.capacity import IntakeGate, SpaceLimits
from edge_agent.clock import ClockWatch
from edge_agent.energy import BalancePolicy, EnergyBalance, GridMap
from edge_agent.localtime import DEFAULT_ZONE, MeterClocks
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.registry import load_meters, meter_model_keys, meter_zones
from edge_agent.rollout import ModelManager
from edge_agent.scoring import ActiveModels, Detector
from edge_agent.sdnotify import Notifier
from edge_agent.settings import AgentSettings
from edge_agent.sources import Intake, Source
from edge_agent.sync import Sync, SyncPolicy
from edge_agent.validate import Validator

if TYPE_CHECKING:
    from edge_agent.local_metrics import LocalMetrics
    from simulator import Fleet

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
PRUNE_WHEN_FULL_S = 5.0  # intake paused for lack of room: give room back sooner


def uplink_config(s: AgentSettings) -> LinkConfig:
    """The link to central's broker (client id: with a certificate identity the broker replaces
    it by the identity, the gateway id)."""
    return LinkConfig.of(
        s,
        f"eiot-agent-{s.gateway_id}",
        keepalive_s=s.keepalive_s,
        session_expiry_s=s.session_expiry_s,
        backoff_min_s=s.backoff_min_s,
        backoff_max_s=s.backoff_max_s,
    )


def source_config(s: AgentSettings) -> LinkConfig:
    """The link to the local broker meters or a head-end publish to (on the gateway itself: no
    uplink identity goes there)."""
    return LinkConfig(
        client_id=f"eiot-source-{s.gateway_id}",
        host=s.source_broker_host,
        port=s.source_broker_port,
        keepalive_s=s.keepalive_s,
        session_expiry_s=s.session_expiry_s,
        backoff_min_s=s.backoff_min_s,
        backoff_max_s=s.backoff_max_s,
    )


@dataclass(frozen=True)
class Detection:
    """The detection parts of an agent, built complete and wired to each other."""

    detector: Detector
    models: ModelManager
    energy: EnergyBalance | None


def build_detection(
    s: AgentSettings, buffer: Buffer, meters: list[dict[str, Any]], clock: Callable[[], float]
) -> Detection:
    """The detector (scoring, alerts), the model rollout that feeds it models, and the energy
    balance when the registry says which meters hang under which transformer."""
    model_keys = meter_model_keys(meters)
    demand = Counter(model_keys.values())
    active = ActiveModels(s.model_name, demand=demand, limit=s.max_models)
    grid = GridMap.from_meters(meters)
    energy = None
    if grid:
        energy = EnergyBalance(
            buffer.readings,
            buffer.alerts,
            buffer.meta,
            grid,
            s.gateway_id,
            BalancePolicy(
                window_s=s.energy_balance_window_s,
                expected_loss_share=s.energy_balance_expected_loss,
                gap_share=s.energy_balance_gap_share,
                min_gap_kwh=s.energy_balance_min_kwh,
                min_completeness=s.energy_balance_min_completeness,
                grace_s=s.energy_balance_grace_s,
            ),
        )
        energy.check(clock())  # windows completed before a restart
        log.info(
            "energy balance on for %d transformers (%d customer meters)",
            len(grid.transformer_meter),
            sum(len(c) for c in grid.customers.values()),
        )
    clocks = MeterClocks(s.timezone or DEFAULT_ZONE, meter_zones(meters))
    detector = Detector(
        s.gateway_id,
        buffer.readings,
        active,
        cooldown=Cooldown(s.alert_cooldown_s, buffer.alerts.last_alerted()),
        transformer_meters=grid.transformer_meters if grid else frozenset(),
        energy=energy,
        meter_models=model_keys,
        clocks=clocks,
        profiles=buffer.profiles,
    )
    models = ModelManager(
        buffer.models,
        buffer.counters,
        buffer.meta,
        active,
        name=s.model_name,
        public_key=s.model_public_key,
        clock=clock,
        threads=s.model_threads,
        keys={k for keys in model_keys.values() for k in keys},
    )
    return Detection(detector, models, energy)


class Agent:
    """``clock`` (the wall clock) stamps; ``monotonic`` times every wait (``edge_agent.clock``)."""

    def __init__(
        self,
        settings: AgentSettings,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = s = settings
        self.clock = clock
        self.monotonic = monotonic
        self.notifier = notifier or Notifier()  # systemd (Type=notify, WatchdogSec)
        self.space_limits = SpaceLimits.of(s.buffer_max_mb, s.disk_reserve_mb)
        # a buffer the card damaged is set aside and salvaged into a new one (salvage.py)
        self.recovery = open_checked(
            s.db_path,
            synchronous=s.synchronous,
            max_bytes=self.space_limits.budget_bytes,
            reserve_bytes=self.space_limits.reserve_bytes,
            on_progress=lambda text: self.notifier.still_starting(text, 120),
        )
        self.buffer = Buffer(
            s.db_path, synchronous=s.synchronous, cap=s.buffer_cap_readings, cap_policy=s.cap_policy
        )
        self.sources: list[Source] = []
        try:
            self._assemble()
        except BaseException:
            # half built (a full disk, a bad registry file): release what was opened, or every
            # retry of a start would leave a buffer connection and a source's MQTT session
            for source in self.sources:
                source.close()
            self.buffer.close()
            raise

    def _assemble(self) -> None:
        s, clock, monotonic = self.settings, self.clock, self.monotonic
        self.watch = ClockWatch(self.buffer, s.gateway_id, wall=clock, monotonic=monotonic)
        # A simulated fleet is the registry when there is no registry file.
        fleet = None
        if s.sim is not None:
            from edge_agent.sources.sim import make_fleet  # numpy: only for the simulator

            fleet = make_fleet(s.sim)
        detection = build_detection(s, self.buffer, self._registry_meters(fleet), clock)
        self.detector = detection.detector
        self.energy = detection.energy
        self.models = detection.models
        self.intake = Intake(
            self.buffer.readings,
            self.buffer.meta,
            Validator(
                clock,
                max_future_s=s.max_future_s,
                max_kw=s.max_kw,
                latest_now=self.watch.latest_now,
            ),
            self.detector,
        )
        self._build_sources(fleet)
        self.gate = IntakeGate(
            self.buffer,
            self.space_limits,
            s.gateway_id,
            wall=clock,
            monotonic=monotonic,
        )
        self.intake.on_full = self.gate.full
        self.models.start(s.model_path)
        self._acks: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._status_due = threading.Event()
        self._ack_topic = topics.ack(s.topic_root, s.gateway_id)
        self._model_topics = {topics.model(s.topic_root, n) for n in sorted(self.models.names)}
        cfg = uplink_config(s)
        cfg.will = (
            topics.status(s.topic_root, s.gateway_id),
            lambda: wire.encode_model(status.offline(s.gateway_id, clock()), compress=False),
        )
        cfg.subscriptions = [(self._ack_topic, 1)] + [(t, 1) for t in sorted(self._model_topics)]
        self.link = MqttLink(cfg, on_message=self._on_message, on_connect=self._on_connect)
        self.outbox = AlertOutbox(
            self.buffer.alerts,
            self.link,
            topics.alerts(s.topic_root, s.gateway_id),
            resend_s=s.alert_resend_s,
            resend_max_s=s.alert_resend_max_s,
        )
        self.sync = Sync(
            self.buffer.batches,
            self.link,
            clock,
            gateway_id=s.gateway_id,
            topic_root=s.topic_root,
            policy=SyncPolicy(
                batch_max_readings=s.batch_max_readings,
                batch_max_age_s=s.batch_max_age_s,
                inflight_window=s.inflight_window,
                ack_timeout_s=s.ack_timeout_s,
                ack_timeout_max_s=s.ack_timeout_max_s,
                compress=s.compress,
                schema=s.wire_schema,
            ),
            monotonic=monotonic,
        )
        self._last_status: float | None = None  # monotonic
        self._last_prune: float | None = None  # monotonic
        self._flushed = threading.Event()
        self.local_metrics: LocalMetrics | None = None  # started by run() when configured

    def _registry_meters(self, fleet: Fleet | None) -> list[dict[str, Any]]:
        """The meters this gateway reads (transformer, customer class), from the registry file,
        else (simulated source) from the simulated fleet; empty when unknown."""
        if self.settings.registry_path is not None:
            return load_meters(self.settings.registry_path, self.settings.gateway_id)
        if fleet is not None:
            return list(fleet.registry().meters)
        return []

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread: route to the main loop's queues."""
        if msg.topic in self._model_topics:
            self.models.on_message(bytes(msg.payload), msg.topic)
        else:
            self._acks.put(msg)

    def _on_connect(self) -> None:
        self.outbox.reconnected()
        self._status_due.set()

    def _build_sources(self, fleet: Fleet | None) -> None:
        s = self.settings
        sources = self.sources  # filled as built: a failure half-way closes those already made
        if s.sim is not None:
            from edge_agent.sources.sim import SimSource

            sources.append(SimSource(s.sim, self.intake, fleet))
        if s.spool_dir is not None:
            from edge_agent.sources.spool import SpoolSource

            sources.append(
                SpoolSource(
                    s.spool_dir, self.intake, self.buffer.spool, seed_meter_id=s.spool_meter_id
                )
            )
        if s.source_topic:
            from edge_agent.sources.mqtt_source import MqttSource

            sources.append(MqttSource(source_config(s), s.source_topic, self.intake))
        if s.modbus is not None:
            from edge_agent.sources.modbus import ModbusSource

            sources.append(
                ModbusSource(
                    s.modbus,
                    self.intake,
                    self.buffer.alerts,
                    s.gateway_id,
                    max_kw=s.max_kw,
                    trusted=lambda: self.watch.trusted,
                )
            )
        if s.dlms is not None:
            from edge_agent.sources.dlms import DlmsSource

            sources.append(
                DlmsSource(
                    s.dlms,
                    self.intake,
                    self.buffer.alerts,
                    s.gateway_id,
                    max_kw=s.max_kw,
                    trusted=lambda: self.watch.trusted,
                )
            )

    # --- loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_drained: bool = False) -> None:
        self.link.start()
        log.info(
            "agent %s started: buffer %s, %d pending",
            self.settings.gateway_id,
            self.settings.db_path,
            self.buffer.readings.pending,
        )
        self._start_local_metrics()
        self.notifier.ready(f"{self.buffer.readings.pending} readings pending")
        try:
            while not stop.is_set():
                self.notifier.tick(self.monotonic())
                work = self.step()
                if exit_when_drained and self.drained():
                    log.info("all sources exhausted and every reading acknowledged")
                    break
                if not work:
                    stop.wait(0.02)
        finally:
            self.shutdown()

    def _start_local_metrics(self) -> None:
        """The on-site ``/metrics``: an address that cannot be bound is logged, and the agent
        runs without it (collecting readings matters more than showing them)."""
        s = self.settings
        if s.local_metrics_port is None:
            return
        from edge_agent.local_metrics import LocalMetrics  # http.server: only when it is on

        metrics = LocalMetrics(s.local_metrics_host, s.local_metrics_port, self.monotonic)
        try:
            port = metrics.start()
        except OSError as exc:
            log.error(
                "local /metrics not served: cannot listen on %s:%d: %s",
                s.local_metrics_host,
                s.local_metrics_port,
                exc,
            )
            return
        self.local_metrics = metrics
        log.info("local /metrics on http://%s:%d/metrics", s.local_metrics_host, port)
        if s.local_metrics_host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("local /metrics listens beyond loopback, without authentication")

    def step(self) -> int:
        """One turn of the loop. A write refused for lack of space closes the intake gate and
        ends the turn; sending, acks and pruning go on in the next turns."""
        try:
            return self._step()
        except BufferFull as exc:
            self.gate.full(exc)
        except sqlite3.OperationalError as exc:  # a write outside a transaction (a counter)
            if not is_full(exc):
                raise
            self.gate.full(BufferFull(str(exc)))
        return 0

    def _step(self) -> int:
        self.watch.check()
        now = self.clock()
        mono = self.monotonic()
        work = self._drain_acks()
        if self.models.drain():  # a model swap happens here, between two intake calls
            self._status_due.set()
            work += 1
        if self.gate.check():
            for source in self.sources:
                work += source.poll(now)
        self.sync.flush = all(_exhausted(src) for src in self.sources)
        work += self.sync.tick()
        work += self.outbox.tick(self.clock())
        if self.link.connected() and (
            self._status_due.is_set()
            or _due(self._last_status, mono, self.settings.status_interval_s)
        ):
            self._status_due.clear()
            self.publish_status(now)
        if self.local_metrics is not None and self.local_metrics.wanted():
            state: Literal["online", "offline"] = "online" if self.link.connected() else "offline"
            self.local_metrics.show(self._status(now, state).to_json_dict())
        every = PRUNE_EVERY_S if self.gate.is_open else PRUNE_WHEN_FULL_S
        # a suspect clock prunes nothing, unless room is short (pruning is by reading time
        # and is bounded by the wall clock, so it stays safe then too)
        if _due(self._last_prune, mono, every) and (self.watch.trusted or not self.gate.is_open):
            self._last_prune = mono
            self.buffer.maintenance.prune(self.settings.retention_s, now=now)
            if self.gate.state == "buffer_full":
                # the acknowledged history alone may exceed the budget: it gives way
                freed = self.buffer.maintenance.prune_for_room(self.gate.room_target_bytes)
                if freed:
                    log.warning(
                        "buffer budget: %d acknowledged readings of the history pruned early",
                        freed,
                    )
        return work

    def drained(self) -> bool:
        if not all(_exhausted(src) for src in self.sources):
            return False
        count, _ = self.buffer.batches.unbatched(1)
        return (
            count == 0
            and self.buffer.readings.pending == 0
            and not self.buffer.batches.open()
            and self.buffer.alerts.undelivered() == 0
        )

    def _drain_acks(self) -> int:
        """Central's answers: ``ack.v2`` for batches, ``alert_ack.v1`` for alerts."""
        n = 0
        alert_acks: list[wire.AlertAck] = []
        while True:
            try:
                msg = self._acks.get_nowait()
            except queue.Empty:
                break
            n += 1
            try:
                obj = wire.decode(bytes(msg.payload))
                if wire.schema_of(obj) == "alert_ack.v1":
                    alert_acks.append(wire.AlertAck.model_validate(obj))
                    continue
                ack = wire.Ack.model_validate(obj)
            except (wire.DecodeError, ValidationError) as exc:
                log.warning("unreadable ack on %s: %s", msg.topic, exc)
                self.buffer.counters.add({"acks_invalid": 1})
                continue
            if ack.status == "rejected":
                log.error("central rejected batch %s: %s", ack.batch_id, ack.reason)
            self.sync.on_ack(ack)
        if alert_acks:
            self.outbox.answered(alert_acks, self.clock())
        return n

    def publish_status(
        self,
        now: float,
        state: Literal["online", "offline"] = "online",
        on_delivered: threading.Event | None = None,
    ) -> None:
        self._last_status = self.monotonic()
        msg = self._status(now, state)
        self.link.publish(
            topics.status(self.settings.topic_root, self.settings.gateway_id),
            wire.encode_model(msg, compress=False),
            qos=1,
            retain=True,
            on_delivered=None if on_delivered is None else (lambda ok: on_delivered.set()),
        )

    def _status(self, now: float, state: Literal["online", "offline"]) -> wire.Status:
        return status.build(
            self.buffer,
            self.settings.gateway_id,
            now,
            state=state,
            models=self.models.states(),
            model_error=self.models.status_error(),
            gate=self.gate,
            watch=self.watch,
            timezone=self.settings.timezone or DEFAULT_ZONE,
        )

    def shutdown(self) -> None:
        self.notifier.stopping()
        if self.local_metrics is not None:
            self.local_metrics.close()
        for source in self.sources:
            source.close()
        if self.link.connected():
            self._flushed.clear()
            self.publish_status(self.clock(), state="offline", on_delivered=self._flushed)
            self._flushed.wait(2.0)  # the broker has the retained offline status (PUBACK)
        self.link.stop()
        self.buffer.close()
        self.notifier.close()


def _due(last: float | None, now: float, every: float) -> bool:
    return last is None or now - last >= every


def _exhausted(source: Source) -> bool:
    check = getattr(source, "exhausted", None)
    return bool(check()) if check else False
