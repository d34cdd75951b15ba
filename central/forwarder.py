"""Alerts to people: ``central alerts forward`` posts every gateway alert to an HTTP webhook (a
ticketing system, a chat channel, a revenue-protection team's tool).

It subscribes as its own identity ``svc-alerts-<name>`` (role ``alerts``: it reads alerts and
nothing else) with a persistent MQTT session, so alerts raised while it is down wait at the
broker. Each message is handled one at a time and acknowledged to the broker (manual PUBACK)
only once its outcome is recorded in a small SQLite ledger: a forwarder killed at any point gets
the message again after a restart, and the ledger makes that harmless.

* ``delivered``: the webhook answered 2xx. The POST carries ``Idempotency-Key: <alert_id>``:
  an alert is posted again only if the forwarder died between the webhook's answer and the
  ledger's commit, and the key lets the receiver see it is the same alert.
* ``rejected``: the webhook refused it for good (4xx other than 408, 425 and 429): recorded
  with the status and acknowledged, so one bad alert cannot stop the ones behind it.
* ``duplicate``: the ledger has it already (agents send an alert again until central answers,
  so duplicates are normal): acknowledged, not posted.
* ``skipped``: not an ``alert.v1`` a gateway may send (unreadable, another gateway's id in the
  payload, a kind only central raises): logged and counted, acknowledged, not posted.
* Anything else (5xx, a timeout, no route, 408/425/429) is retried with a growing wait (up to
  ``retry_max_s``; ``Retry-After`` in seconds is honoured within it) until it is delivered or
  the forwarder stops; the message stays unacknowledged meanwhile.

The ledger forgets delivered alerts after ``ledger_keep_days`` (agents stop resending an alert
once central has it, within minutes to hours), so it stays small.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
from pydantic import Field, SecretStr, ValidationError, model_validator

from edge_agent import topics, wire
from edge_agent.backoff import Backoff
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.settings_base import BrokerSettings, TomlEnvSettings, build
from edge_agent.vocabulary import CENTRAL_ALERT_KINDS, ID_PATTERN

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "rejected", "duplicate", "skipped"]
_RETRY_STATUS = {408, 425, 429}


class ForwarderSettings(TomlEnvSettings, BrokerSettings):
    profile: Literal["laptop", "production"] = "laptop"
    topic_root: str = topics.DEFAULT_ROOT
    # Its identity is svc-alerts-<name> (central pki issue svc-alerts-<name> --role alerts).
    name: str = Field(default="webhook", pattern=ID_PATTERN)
    webhook_url: str = Field(pattern=r"^https?://")
    webhook_token: SecretStr | None = None  # sent as "Authorization: Bearer <token>"
    kinds: list[str] = []  # only these alert kinds (empty: every kind)
    ledger_path: Path = Path("var/forwarder/ledger.db")
    ledger_keep_days: int = Field(default=30, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    retry_min_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    # Alerts raised while the forwarder is down wait at the broker this long.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)

    @model_validator(mode="after")
    def _production_is_secure(self) -> ForwarderSettings:
        if self.profile == "production":
            problems = self.broker_problems()
            if not self.webhook_url.startswith("https://"):
                problems.append("webhook_url must be https:// in production")
            if problems:
                raise ValueError("; ".join(problems))
        return self


class Ledger:
    """What became of each alert, by ``alert_id`` (SQLite, WAL, one writer)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("pragma journal_mode = wal")
        self.conn.execute("pragma synchronous = full")
        self.conn.execute(
            "create table if not exists forwarded ("
            " alert_id text primary key, gateway_id text not null, kind text not null,"
            " outcome text not null, http_status integer, detail text, at real not null)"
        )

    def seen(self, alert_id: str) -> bool:
        row = self.conn.execute("select 1 from forwarded where alert_id = ?", (alert_id,))
        return row.fetchone() is not None

    def record(
        self, alert: wire.Alert, outcome: Outcome, status: int | None, detail: str, now: float
    ) -> None:
        self.conn.execute(
            "insert or ignore into forwarded values (?, ?, ?, ?, ?, ?, ?)",
            (alert.alert_id, alert.gateway_id, alert.kind, outcome, status, detail[:500], now),
        )

    def forget_before(self, when: float) -> int:
        return self.conn.execute("delete from forwarded where at < ?", (when,)).rowcount

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (timeout, refused, no route)
    detail: str
    retry_after_s: float | None = None

    @property
    def final(self) -> bool:
        """Delivered, or refused for good: no point in sending it again."""
        return self.status is not None and self.status < 500 and self.status not in _RETRY_STATUS


class Webhook:
    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url = url
        self.token = token
        self.timeout_s = timeout_s

    def post(self, alert: wire.Alert) -> Answer:
        body = json.dumps(alert.to_json_dict(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.alert_id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return Answer(response.status, response.reason or "")
        except urllib.error.HTTPError as exc:
            return Answer(
                exc.code, str(exc.reason)[:200], _retry_after(exc.headers.get("Retry-After"))
            )
        except (urllib.error.URLError, OSError) as exc:
            return Answer(None, str(getattr(exc, "reason", exc))[:200])


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


class Forwarder:
    """See the module doc. ``webhook``, ``wall`` and ``monotonic`` are seams for the tests."""

    def __init__(
        self,
        s: ForwarderSettings,
        webhook: Webhook | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = s
        token = s.webhook_token.get_secret_value() if s.webhook_token else None
        self.webhook = webhook or Webhook(s.webhook_url, token, s.timeout_s)
        self.wall = wall
        self.monotonic = monotonic
        self.ledger = Ledger(s.ledger_path)
        self.counters: Counter[str] = Counter()
        self._inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        config = LinkConfig.of(
            s,
            f"svc-alerts-{s.name}",
            session_expiry_s=s.session_expiry_s,
            manual_ack=True,
            receive_maximum=1,  # one alert at a time: the broker keeps the rest
            subscriptions=[(topics.alerts(s.topic_root, "+"), 1)],
            backoff_max_s=30.0,
        )
        self.link = MqttLink(config, on_message=self._inbox.put)

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info("forwarding %s to %s", topics.alerts(self.s.topic_root, "+"), self.s.webhook_url)
        next_prune = 0.0
        try:
            while not stop.is_set():
                if self.monotonic() >= next_prune:
                    keep_s = self.s.ledger_keep_days * 86400
                    forgotten = self.ledger.forget_before(self.wall() - keep_s)
                    if forgotten:
                        log.info("ledger: %d old entries forgotten", forgotten)
                    next_prune = self.monotonic() + 3600
                try:
                    msg = self._inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                outcome = self.handle(msg.topic, bytes(msg.payload), stop)
                if outcome is None:
                    return  # stopping mid-retry: the broker gives it again after a restart
                self.link.ack(msg.mid, msg.qos)
        finally:
            self.link.stop()
            self.ledger.close()

    def handle(self, topic: str, payload: bytes, stop: threading.Event) -> Outcome | None:
        """One message to its outcome (recorded); None when stopped before one."""
        alert, why = self._parse(topic, payload)
        if alert is None:
            log.warning("skipped a message on %s: %s", topic, why)
            self.counters["skipped"] += 1
            return "skipped"
        if self.ledger.seen(alert.alert_id):
            self.counters["duplicate"] += 1
            return "duplicate"
        if self.s.kinds and alert.kind not in self.s.kinds:
            self.counters["not_forwarded_kind"] += 1
            return "skipped"
        backoff = Backoff(self.s.retry_min_s, self.s.retry_max_s)
        while True:
            answer = self.webhook.post(alert)
            if answer.final:
                break
            wait = backoff.next_delay()
            if answer.retry_after_s is not None:
                wait = min(self.s.retry_max_s, max(wait, answer.retry_after_s))
            self.counters["retries"] += 1
            log.warning(
                "webhook %s for alert %s: again in %.1f s",
                answer.status or answer.detail,
                alert.alert_id,
                wait,
            )
            if stop.wait(wait):
                return None
        outcome: Outcome = "delivered" if answer.status and answer.status < 300 else "rejected"
        if outcome == "rejected":
            log.error(
                "webhook refused alert %s: %s %s", alert.alert_id, answer.status, answer.detail
            )
        self.ledger.record(alert, outcome, answer.status, answer.detail, self.wall())
        self.counters[outcome] += 1
        return outcome

    def _parse(self, topic: str, payload: bytes) -> tuple[wire.Alert | None, str]:
        gateway = topics.gateway_of(topic, self.s.topic_root)
        try:
            alert = wire.Alert.model_validate(wire.decode(payload, wire.Limits()))
        except wire.DecodeError as exc:
            return None, str(exc)
        except ValidationError as exc:
            return None, "invalid_alert: " + wire.explain(exc)
        if alert.gateway_id != gateway:
            return None, f"gateway_mismatch: topic {gateway}, payload {alert.gateway_id}"
        if alert.kind in CENTRAL_ALERT_KINDS:
            return None, f"reserved_kind: {alert.kind}"
        return alert, ""


def command(args: argparse.Namespace) -> int:
    settings = build(ForwarderSettings, args.config)
    forwarder = Forwarder(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    forwarder.run(stop)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser(
        "alerts",
        help="alerts to people: forward gateway alerts to an HTTP webhook",
        description="Alert delivery outside MQTT (central/forwarder.py).",
    )
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    fwd = alerts_sub.add_parser(
        "forward",
        help="post every gateway alert to a webhook, once, until stopped",
        description=(__doc__ or "").split("\n\n")[1],
    )
    fwd.add_argument("--config", type=Path, help="TOML settings file (webhook_url, name, ...)")
    fwd.set_defaults(func=command)
