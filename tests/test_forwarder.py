"""Alerts to people (central/forwarder.py): a real forwarder process, as its own identity on the
secure broker, posting a gateway's alerts to a local HTTP server that fails, refuses one alert,
and sees the forwarder killed mid-stream while more alerts come. Every alert arrives, a refused
one does not block the rest, duplicates and hostile messages are not posted."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from central.local_services import SecureMosquitto
from central.pki import Pki
from edge_agent import topics
from edge_agent.alerts import make_alert
from tests.support.processes import Proc, wait_until
from tests.support.secure import connect, identity_env

pytestmark = pytest.mark.services

T0 = 1_772_325_000


class Receiver:
    """A webhook: answers 503 to the first ``fail_first`` posts and 400 to alert ids in
    ``refuse``; records every post (idempotency key, body, status)."""

    def __init__(self, fail_first: int, refuse: set[str]) -> None:
        self.fail_first = fail_first
        self.refuse = refuse
        self.posts: list[tuple[str, dict[str, Any], int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= failing
                    status = 503 if failing else 400 if key in receiver.refuse else 200
                    receiver.posts.append((key, body, status))
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[str]:
        with self.lock:
            return [k for k, _, status in self.posts if status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=3, refuse=set())
    yield r
    r.server.shutdown()
    r.server.server_close()


def alert(gw: str, n: int, *, payload_gw: str | None = None) -> tuple[str, bytes]:
    record = make_alert(
        gateway_id=payload_gw or gw, kind="tamper", meter_id=f"m{n}", ts=T0 + n * 1800
    )
    return record.alert_id, record.payload.encode()


def test_every_alert_reaches_the_webhook_through_failures_kills_and_duplicates(
    tmp_path: Path,
    topic_root: str,
    secure_broker: SecureMosquitto,
    pki: Pki,
    receiver: Receiver,
) -> None:
    refused_id, _ = alert("gw-a", 3)
    receiver.refuse.add(refused_id)
    ledger = tmp_path / "ledger.db"
    env = {
        **identity_env(pki, "svc-alerts-test", secure_broker.port),
        "EIOT_NAME": "test",
        "EIOT_TOPIC_ROOT": topic_root,
        "EIOT_WEBHOOK_URL": receiver.url,
        "EIOT_LEDGER_PATH": str(ledger),
        "EIOT_RETRY_MIN_S": "0.1",
        "EIOT_RETRY_MAX_S": "0.5",
    }
    forwarder = Proc(["-m", "central", "alerts", "forward"], env, tmp_path / "fwd.log").start()
    gw = connect(pki, "gw-a", secure_broker.port)
    try:
        topic = topics.alerts(topic_root, "gw-a")
        first_id, first = alert("gw-a", 0)
        # Published until the forwarder has subscribed (before that the broker has nobody to
        # give it to); the first delivery comes after three 503s. Repeats are duplicates.
        deadline = time.monotonic() + 30
        while not receiver.delivered() and time.monotonic() < deadline:
            gw.publish(topic, first)
            time.sleep(0.5)
        assert receiver.delivered() == [first_id], forwarder.output()[-2000:]
        ids = [first_id]
        for n in range(1, 10):
            aid, payload = alert("gw-a", n)
            ids.append(aid)
            gw.publish(topic, payload)
        gw.publish(topic, first)  # an agent resending: not posted again
        gw.publish(topic, b"{not json")  # skipped, not posted, not blocking
        gw.publish(topic, alert("gw-a", 99, payload_gw="gw-b")[1])  # another gateway's name
        wait_until(lambda: len(receiver.delivered()) >= 5, 30, "half of the alerts")
        forwarder.kill()  # mid-stream, SIGKILL
        for n in range(10, 20):  # raised while it is down: they wait at the broker
            aid, payload = alert("gw-a", n)
            ids.append(aid)
            gw.publish(topic, payload)
        forwarder.start()
        wanted = set(ids) - {refused_id}
        wait_until(lambda: set(receiver.delivered()) >= wanted, 60, "every alert delivered")
        time.sleep(1.0)  # nothing more comes
    finally:
        gw.close()
        forwarder.stop()
    delivered = receiver.delivered()
    assert set(delivered) == wanted, forwarder.output()[-2000:]
    # posted twice only if killed between the webhook's 200 and the ledger's commit
    assert len(delivered) <= len(wanted) + 1, delivered
    refused = [k for k, _, status in receiver.posts if status == 400]
    assert refused == [refused_id]  # refused once, recorded, never retried
    bodies = {k: b for k, b, status in receiver.posts if status == 200}
    assert bodies[first_id]["meter_id"] == "m0" and bodies[first_id]["gateway_id"] == "gw-a"
    with sqlite3.connect(ledger) as conn:
        outcomes = dict(conn.execute("select alert_id, outcome from forwarded"))
    assert outcomes == {**dict.fromkeys(wanted, "delivered"), refused_id: "rejected"}
    log = forwarder.output()
    assert "skipped a message" in log and "gateway_mismatch" in log
    assert "Traceback" not in log, log[-3000:]
