"""The alert outbox publishes through the Publisher seam: delivered on central's answer (not on
the broker's PUBACK), sent again when refused or unanswered, everything again after a reconnect;
and MqttLink reports a real broker's PUBACK to the publisher's callback."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from central.netproxy import TcpProxy
from edge_agent import wire
from edge_agent.alerts import AlertOutbox, make_alert
from edge_agent.buffer import Buffer
from edge_agent.mqtt_link import LinkConfig, MqttLink
from edge_agent.publisher import MemoryPublisher
from tests.support.builders import row
from tests.support.processes import BROKER_PORT


def _outbox(tmp_path: Path, pub: MemoryPublisher) -> tuple[Buffer, AlertOutbox]:
    buffer = Buffer(tmp_path / "b.db")
    alerts = [
        make_alert(gateway_id="gw", kind="tamper", meter_id=f"m{i}", ts=row(f"m{i}", 0)[1])
        for i in range(3)
    ]
    buffer.alerts.add(alerts, now=1.0)
    return buffer, AlertOutbox(buffer.alerts, pub, "t/alerts", resend_s=30)


def test_delivered_only_on_centrals_answer(tmp_path: Path) -> None:
    pub = MemoryPublisher()
    buffer, outbox = _outbox(tmp_path, pub)
    assert outbox.tick(now=10.0) == 3 and len(pub.sent) == 3
    assert buffer.alerts.undelivered() == 3  # published is not delivered
    assert outbox.tick(now=11.0) == 0  # nothing due before resend_s
    pub.confirm(ok=True)
    outbox.tick(now=12.0)
    assert buffer.alerts.undelivered() == 3  # nor is the broker's PUBACK
    ids = [json.loads(m.payload)["alert_id"] for m in pub.sent]
    answers = [wire.AlertAck(alert_id=ids[0], status="stored")]
    answers.append(wire.AlertAck(alert_id=ids[1], status="rejected", reason="reserved_kind: x"))
    assert outbox.answered(answers, now=13.0) == 2
    assert outbox.answered(answers, now=14.0) == 0  # an answer repeated changes nothing
    assert buffer.alerts.undelivered() == 1
    assert outbox.tick(now=41.0) == 1 and json.loads(pub.sent[-1].payload)["alert_id"] == ids[2]
    counters = buffer.counters.all()
    assert counters["alerts_delivered"] == 2 and counters["alerts_rejected_by_central"] == 1


def test_refused_and_unanswered_alerts_go_again(tmp_path: Path) -> None:
    pub = MemoryPublisher()
    buffer, outbox = _outbox(tmp_path, pub)
    outbox.tick(now=10.0)
    pub.confirm(ok=False)  # e.g. not authorised
    outbox.tick(now=11.0)
    assert buffer.counters.all()["alerts_refused_by_broker"] == 3
    assert buffer.alerts.undelivered() == 3
    assert outbox.tick(now=41.0) == 3 and len(pub.sent) == 6  # resent after resend_s
    assert buffer.counters.all()["alerts_resent"] == 3
    pub.up = False
    assert outbox.tick(now=80.0) == 0  # not connected: nothing leaves
    pub.up = True
    outbox.reconnected()  # after a reconnect everything open goes at once
    assert outbox.tick(now=81.0) == 3 and len(pub.sent) == 9
    ids = {m.payload for m in pub.sent[-3:]}
    assert ids == {m.payload for m in pub.sent[:3]}  # the same alerts, the same bytes


def test_unanswered_alerts_wait_longer_after_each_send(tmp_path: Path) -> None:
    """Central down for a day: each alert is sent at 30 s, 60 s, 120 s... apart, at most
    resend_max_s, not every 30 s; a reconnect still sends everything open at once."""
    pub = MemoryPublisher()
    buffer = Buffer(tmp_path / "b.db")
    buffer.alerts.add(
        [make_alert(gateway_id="gw", kind="tamper", meter_id="m", ts=row("m", 0)[1])], now=0.0
    )
    outbox = AlertOutbox(buffer.alerts, pub, "t/alerts", resend_s=30, resend_max_s=300)
    sends = []
    for now in range(0, 86400, 5):
        if outbox.tick(now=float(now)):
            sends.append(now)
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert gaps[:4] == [30, 60, 120, 240] and set(gaps[4:]) == {300}, gaps
    assert len(sends) < 86400 / 300 + 5
    outbox.reconnected()
    assert outbox.tick(now=86401.0) == 1  # at once, whatever its wait


def test_mqtt_link_reports_the_pubacks_of_a_real_broker(topic_root: str) -> None:
    link = MqttLink(LinkConfig(client_id=f"outbox-{topic_root[-8:]}", port=BROKER_PORT))
    link.start()
    try:
        assert link.wait_connected(10)
        answers: list[bool] = []
        done = threading.Event()

        def delivered(ok: bool) -> None:
            answers.append(ok)
            if len(answers) == 50:
                done.set()

        for i in range(50):
            assert link.publish(f"{topic_root}/x", b"%d" % i, qos=1, on_delivered=delivered)
        assert done.wait(10), f"{len(answers)} of 50 PUBACKs reported"
        assert answers == [True] * 50
        # QoS 0 messages are answered too (when written): nothing may stay behind to be taken
        # for the PUBACK of a later message with the same id
        for _ in range(20):
            assert link.publish(f"{topic_root}/x", b"q0", qos=0, on_delivered=delivered)
        deadline = time.monotonic() + 5
        while (link._early or link._on_delivered) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link._early == {} and link._on_delivered == {}
        assert len(answers) == 50  # a QoS 0 write is not a delivery
    finally:
        link.stop()


def test_each_connection_leaves_its_own_last_will(
    topic_root: str, proxy_factory: type[TcpProxy]
) -> None:
    """Two unclean drops leave two offline statuses with different times: central keys status
    rows by (gateway, sent_at), so a will stamped once at start would be dropped as a duplicate
    the second time and the gateway would show online while it is gone."""
    proxy = proxy_factory(BROKER_PORT)
    will_topic = f"{topic_root}/gw/gw-w/status"
    stamps = iter(range(1, 100))
    link = MqttLink(
        LinkConfig(
            client_id=f"will-{topic_root[-8:]}",
            port=proxy.port,
            backoff_min_s=0.1,
            backoff_max_s=0.2,
            will=(will_topic, lambda: b"offline-%d" % next(stamps)),
        )
    )
    wills: list[bytes] = []
    watcher = MqttLink(
        LinkConfig(
            client_id=f"watch-{topic_root[-8:]}",
            port=BROKER_PORT,
            subscriptions=[(will_topic, 1)],
        ),
        on_message=lambda m: wills.append(bytes(m.payload)),
    )
    watcher.start()
    link.start()
    try:
        assert watcher.wait_connected(10) and link.wait_connected(10)
        for drop in (1, 2):
            proxy.drop_connections()  # an unclean drop: the broker publishes the will
            deadline = time.monotonic() + 10
            while len(wills) < drop and time.monotonic() < deadline:
                time.sleep(0.05)
            assert link.wait_connected(10)
            time.sleep(0.3)
        assert wills[:2] == [b"offline-1", b"offline-2"], wills
    finally:
        link.stop()
        watcher.stop()
        cleaner = MqttLink(LinkConfig(client_id=f"clean-{topic_root[-8:]}", port=BROKER_PORT))
        cleaner.start()
        if cleaner.wait_connected(5):
            cleaner.publish(will_topic, b"", retain=True)  # no retained will left behind
        cleaner.stop()


def test_a_clean_stop_leaves_no_last_will(topic_root: str) -> None:
    """``stop`` sends DISCONNECT before the network thread ends: the broker drops the will, so
    an agent stopped on purpose is not reported as vanished (and its own final status stays)."""
    will_topic = f"{topic_root}/gw/gw-s/status"
    wills: list[bytes] = []
    watcher = MqttLink(
        LinkConfig(
            client_id=f"watch-{topic_root[-8:]}", port=BROKER_PORT, subscriptions=[(will_topic, 1)]
        ),
        on_message=lambda m: wills.append(bytes(m.payload)),
    )
    watcher.start()
    try:
        assert watcher.wait_connected(10)
        for n in range(5):
            link = MqttLink(
                LinkConfig(
                    client_id=f"stop-{topic_root[-8:]}",
                    port=BROKER_PORT,
                    will=(will_topic, lambda: b"vanished"),
                )
            )
            link.start()
            assert link.wait_connected(10)
            assert link.publish(will_topic, b"stopped-%d" % n, qos=1, retain=True)
            link.stop()
        time.sleep(1.0)
        assert wills == [b"stopped-%d" % n for n in range(5)], wills
    finally:
        watcher.publish(will_topic, b"", retain=True)
        watcher.stop()


def test_only_the_network_thread_writes_to_the_socket(topic_root: str) -> None:
    """paho writes a message queued from another thread (publish, a manual ack) from that
    thread unless told otherwise; with TLS, two threads in one connection corrupt it ("bad
    record mac" over a slow link, a reconnect, everything in flight sent again). Every write
    must come from the link's network thread."""
    link = MqttLink(LinkConfig(client_id=f"writer-{topic_root[-8:]}", port=BROKER_PORT))
    writers: set[str] = set()
    write = link.client.loop_write

    def recorded() -> Any:
        writers.add(threading.current_thread().name)
        return write()

    link.client.loop_write = recorded  # type: ignore[method-assign]
    link.start()
    try:
        assert link.wait_connected(10)
        done = threading.Semaphore(0)
        for i in range(200):
            assert link.publish(
                f"{topic_root}/w", b"%d" % i, qos=1, on_delivered=lambda ok: done.release()
            )
        for n in range(200):
            assert done.acquire(timeout=10), f"{n} of 200 PUBACKs"
    finally:
        link.stop()
    assert writers == {f"mqtt-{link.config.client_id}"}, writers
