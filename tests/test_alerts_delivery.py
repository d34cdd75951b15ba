"""Alerts are not lost: the outbox survives an agent SIGKILL (also right after a publish, before
central's answer is recorded), a broker outage and a broker killed right after its PUBACK;
undelivered alerts are published again with the same alert_id, so a subscriber that
de-duplicates by id sees each alert exactly once, and central stores each once."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict

import psycopg
import pytest

from central.local_services import SecureMosquitto
from central.pki import Pki
from edge_agent import topics
from edge_agent.alerts import alert_id
from tests.support.detection import T0, Subscriber, reading, write_spool
from tests.support.rig import Rig

pytestmark = [pytest.mark.services, pytest.mark.slow]

GW = "gw-a"


def tamper_file(rig: Rig, file_no: int, meters: int = 30) -> set[str]:
    """One reading per meter with the cover open (distinct meters: no cooldown in the way);
    returns the alert ids they must raise."""
    items = []
    expected = set()
    for i in range(meters):
        meter = f"tm{file_no}-{i:03d}"
        k = file_no * 10 + i % 5
        items.append(reading(meter, k, flags=["cover_open"]))
        expected.add(alert_id("tamper", meter, T0 + 1800 * (k + 1)))
    write_spool(rig.spool(GW), f"{file_no:05d}", items)
    return expected


def outbox(rig: Rig) -> dict[str, tuple[int, float | None]]:
    """alert_id → (sends, when central answered), as the agent's buffer holds them."""
    db = rig.tmp / f"{GW}.db"
    if not db.exists():  # not created by the agent yet (and not by this reader)
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            rows = conn.execute("select alert_id, attempts, acked_at from alerts").fetchall()
        except sqlite3.OperationalError:  # the agent is still migrating it
            return {}
    return {a: (n, t) for a, n, t in rows}


def central_alerts(rig: Rig) -> dict[str, int]:
    """alert_id → rows in raw.alerts."""
    with psycopg.connect(rig.pg_dsn) as conn:
        return dict(
            conn.execute(
                "select alert_id, count(*) from raw.alerts where kind <> %s group by alert_id",
                ("scoring_off",),  # central's own: this gateway has no model
            )
        )


def test_alerts_survive_agent_kill_and_broker_outage(
    rig: Rig, topic_root: str, secure_broker: SecureMosquitto, pki: Pki
) -> None:
    private_broker = secure_broker
    rig.wait_ingest_ready(rig.start_ingest())
    watcher = "svc-alerts-test"  # an alert subscriber: its identity is its persistent session
    sub = Subscriber(
        private_broker.port,
        [topics.alerts(topic_root, GW)],
        session=watcher,
        tls=(str(pki.ca_cert_path), str(pki.cert_path(watcher)), str(pki.key_path(watcher))),
    ).start()

    def received() -> dict[str, list[bytes]]:
        by_id: dict[str, list[bytes]] = defaultdict(list)
        for alert in sub.payloads("/alerts"):
            by_id[alert["alert_id"]].append(repr(sorted(alert.items())).encode())
        return by_id

    try:
        # 1. Killed right after publishing its 10th alert, before the PUBACK was recorded.
        expected = tamper_file(rig, 0)
        agent = rig.start_agent(GW, failpoint="alerts.after_publish:10")
        assert agent.wait(30) == -9, "the failpoint did not fire\n" + rig.logs()
        assert len(received()) < len(expected)  # what paho wrote before the kill
        rig.start_agent(GW)
        rig.wait_until(lambda: set(received()) == expected, 30, "every alert after the kill")
        rig.wait_until(
            lambda: all(t is not None for _, t in outbox(rig).values()), 15, "central's answers"
        )

        # 2. The broker goes away; the agent accepts more tampered readings, is killed.
        private_broker.kill()
        more = tamper_file(rig, 1)
        rig.wait_until(lambda: len(outbox(rig)) == len(expected | more), 30, "alerts in outbox")
        assert all(outbox(rig)[a][1] is None for a in more)  # none delivered
        agent.kill()

        # 3. The broker is back, then the agent: the outbox goes out.
        private_broker.start()
        sub.wait_for(lambda: sub.client.is_connected(), 15, "subscriber reconnected")
        time.sleep(0.5)  # its subscription renewed
        rig.start_agent(GW)
        rig.wait_until(lambda: set(received()) == expected | more, 45, "alerts after the outage")
        rig.wait_until(
            lambda: all(t is not None for _, t in outbox(rig).values()), 15, "all delivered"
        )
    finally:
        sub.stop()

    got = received()
    assert set(got) == set(outbox(rig)) == expected | more
    for copies in got.values():  # a resend is the very same alert
        assert len(set(copies)) == 1
    counters = rig.counters(GW)
    assert counters["alerts_raised_tamper"] == len(expected | more)
    assert counters["alerts_delivered"] == len(expected | more)
    # (an alert paho wrote before the kill may be answered before the new agent sends it)
    assert counters["alerts_published"] >= len(more)
    assert central_alerts(rig) == {a: 1 for a in expected | more}


def test_alerts_survive_a_broker_killed_after_its_puback(
    rig: Rig, secure_broker: SecureMosquitto
) -> None:
    """The broker acknowledges the alerts and dies before it saved them (SIGKILL well inside
    its 5 s autosave interval): the agent, which has no answer from central, sends them again
    once the broker is back, and central stores each once."""
    # The ingest's persistent session is on the broker's disk (one autosave after it
    # subscribed), then the ingest is gone: the broker queues the alerts for it, in memory.
    first = rig.start_ingest()
    rig.wait_ingest_ready(first)
    time.sleep(6)
    first.kill()
    expected = tamper_file(rig, 0, meters=11)
    agent = rig.start_agent(GW)
    rig.wait_until(
        lambda: len(outbox(rig)) == len(expected) and all(n > 0 for n, _ in outbox(rig).values()),
        30,
        "alerts published",
    )
    time.sleep(0.3)  # the PUBACKs are in
    secure_broker.kill()
    assert all(t is None for _, t in outbox(rig).values())  # a PUBACK is no delivery
    secure_broker.start()
    ingest = rig.start_ingest()
    rig.wait_ingest_ready(ingest)
    rig.wait_until(
        lambda: all(t is not None for _, t in outbox(rig).values()), 60, "central's answers"
    )
    assert central_alerts(rig) == {a: 1 for a in expected}
    assert agent.alive()
