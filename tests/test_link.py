"""The reading path over a real link (``central.netlink``): the agent in a network namespace of
its own, reaching the secure broker only through an emulated modem link, with the kernel's TCP
and TLS doing the talking. A 3G link, a flapping one, a half-open one: every test ends with
0 lost, 0 doubled in PostgreSQL. Skipped only where network namespaces cannot be made."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.netlink import Flapping, Link, LinkBroker, unavailable
from central.pki import Pki
from tests.support.link import LinkRig
from tests.support.processes import Proc

pytestmark = pytest.mark.slow

KEEPALIVE_S = 5
# The rig's agent settings suit a LAN; on a 300 ms link with 1 % loss an ack can take a few
# seconds, and resending after 2 s would only add traffic.
SLOW_LINK = {"EIOT_ACK_TIMEOUT_S": "10", "EIOT_ACK_TIMEOUT_MAX_S": "30"}


@pytest.fixture
def link() -> Iterator[Link]:
    why = unavailable()
    if why:
        pytest.skip(f"real-link tests need network namespaces: {why}")
    with Link() as made:
        yield made


@pytest.fixture
def link_rig(
    tmp_path: Path, pg_dsn: str, topic_root: str, procs: list[Proc], pki: Pki, link: Link
) -> Iterator[LinkRig]:
    broker = LinkBroker(tmp_path / "link-broker", pki, topic_root, link.central_ip)
    broker.start()
    rig = LinkRig(tmp_path, pg_dsn, broker.port, topic_root, procs, pki=pki, link=link)
    rig.agent_overrides = {**SLOW_LINK, "EIOT_KEEPALIVE_S": str(KEEPALIVE_S)}
    yield rig
    for proc in rig.procs:  # before the link goes
        proc.kill()
    broker.kill()


def _acked_at(rig: LinkRig, gw: str) -> list[float]:
    import sqlite3

    with sqlite3.connect(rig.tmp / f"{gw}.db") as conn:
        return [
            t for (t,) in conn.execute("select acked_at from batches where acked_at is not null")
        ]


# --- the link itself ------------------------------------------------------------------------


def _connect_error(link: Link, port: int, timeout: float = 2) -> str:
    """How a TCP connect from the gateway namespace to the root end fails (or 'connected')."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({link.central_ip!r}, {port}), timeout={timeout}).close()\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno)\n"
    )
    done = subprocess.run(
        link.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=20
    )
    return done.stdout.strip()


def test_the_link_shapes_counts_and_cuts(link: Link) -> None:
    server = socket.create_server((link.central_ip, 0))
    port = server.getsockname()[1]
    closed = socket.create_server((link.central_ip, 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: a live path answers with RST (refused)
    try:
        assert _connect_error(link, port) == "connected"
        assert _connect_error(link, closed_port).startswith("ConnectionRefusedError")
        link.profile("3g")
        before = link.counters()
        t0 = time.monotonic()
        assert _connect_error(link, port) == "connected"
        # a handshake over 150 ms each way: at least one round trip, plus starting python
        assert time.monotonic() - t0 >= 0.3
        used = link.counters() - before
        assert used.packets >= 3 and used.ip_bytes >= 3 * 40  # SYN, SYN-ACK, ACK (+ FIN...)
        # half-open: no RST for a closed port, no answer at all; and, as on an IP link, the
        # SYNs go unanswered (not "no route to host": ARP is not the modelled link's)
        link.blackhole(True)
        assert _connect_error(link, closed_port).startswith("TimeoutError")
        subprocess.run(link.command(["ip", "neigh", "flush", "all"]), check=True)
        assert _connect_error(link, port, timeout=5).startswith("TimeoutError")
        link.blackhole(False)
        # the gateway's interface down: the gateway knows at once
        link.down()
        assert _connect_error(link, port) == "OSError 101"  # ENETUNREACH
        link.up()
        assert _connect_error(link, port) == "connected"
        stats = link.stats()
        assert stats["a_to_b"]["delay_ms"] == 150 and stats["a_to_b"]["blackholed"] >= 1
    finally:
        server.close()


def test_namespaces_are_deleted_on_close() -> None:
    why = unavailable()
    if why:
        pytest.skip(f"real-link tests need network namespaces: {why}")
    with Link() as link:
        names = (link.gateway_ns, link.wire_ns)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert link.central_if not in links


# --- the reading path over it ---------------------------------------------------------------


def test_3g_link_delivers_a_backlog_exactly_once(link_rig: LinkRig, link: Link) -> None:
    rig = link_rig
    link.profile("3g")
    for n in range(4):
        rig.feed("gw-a", n, meters=50, intervals=10)  # 2,000 readings waiting
    rig.wait_ingest_ready(rig.start_ingest())
    before = link.counters()
    rig.start_agent("gw-a")
    rig.wait_delivered(60)
    rig.assert_exactly_once()
    # it went over the link: the kernel measured the 3G round trip on the agent's connection,
    # and the gateway's interface carried more than the payloads (TLS, TCP, MQTT around them)
    assert rig.rtt_ms(rig.broker_port) >= 290
    used = link.counters() - before
    assert used.ip_bytes > rig.counters("gw-a")["wire_bytes_sent"]


def test_flapping_link_delivers_everything_exactly_once(link_rig: LinkRig, link: Link) -> None:
    rig = link_rig
    link.profile("3g")
    rig.wait_ingest_ready(rig.start_ingest())
    rig.start_agent("gw-a")
    flapping = Flapping(link, period_s=15, down_s=5, first_down_s=3)
    try:
        deadline = time.monotonic() + 33
        n = 0
        while time.monotonic() < deadline:  # readings keep coming, down or not
            rig.feed("gw-a", n, meters=20, intervals=4)
            n += 1
            time.sleep(1.5)
    finally:
        flapping.stop()
    assert len(flapping.outages) >= 2
    rig.wait_delivered(60)
    rig.assert_exactly_once()
    # the outages were real: no ack reached the gateway while its interface was down
    acks = _acked_at(rig, "gw-a")
    for down, up in flapping.outages:
        assert not [t for t in acks if down + 0.2 < t < up], (down, up)
    assert any(t > flapping.outages[0][1] for t in acks)


def test_half_open_link_is_noticed_and_delivery_resumes(link_rig: LinkRig, link: Link) -> None:
    rig = link_rig
    link.profile("3g")
    rig.wait_ingest_ready(rig.start_ingest())
    agent = rig.start_agent("gw-a")
    rig.feed("gw-a", 0)
    rig.wait_delivered(60)
    rig.wait_until(lambda: link.established(rig.broker_port) == 1, 10, "the agent connected")
    seen = len(agent.output())
    link.blackhole(True)
    cut = time.monotonic()
    rig.feed("gw-a", 1)  # new readings: the agent publishes them into the dead path
    rig.wait_until(
        lambda: "connection lost" in agent.output()[seen:], 4 * KEEPALIVE_S, "the agent to notice"
    )
    noticed = time.monotonic() - cut
    # the MQTT keepalive is the only detector: a PINGREQ after keepalive_s without a byte in,
    # the connection given up keepalive_s after that ping (paho), so between 1 and 2 keepalives
    assert KEEPALIVE_S - 1 <= noticed <= 2 * KEEPALIVE_S + 1.5, noticed
    time.sleep(2)
    link.blackhole(False)
    healed = time.monotonic()
    rig.wait_delivered(60)
    resumed = time.monotonic() - healed
    # reconnect backoff (≤ 1 s here) + a connect attempt in progress (≤ 5 s) + TLS and the
    # resend over 3G
    assert resumed <= 15, resumed
    rig.assert_exactly_once()
