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

import pytest

from central.netlink import Link, unavailable

pytestmark = pytest.mark.slow


@pytest.fixture
def link() -> Iterator[Link]:
    why = unavailable()
    if why:
        pytest.skip(f"real-link tests need network namespaces: {why}")
    with Link() as made:
        yield made


# --- the link itself ------------------------------------------------------------------------


def _connect_error(link: Link, port: int) -> str:
    """How a TCP connect from the gateway namespace to the root end fails (or 'connected')."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({link.central_ip!r}, {port}), timeout=2).close()\n"
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
        # half-open: no RST for a closed port, no answer at all
        link.blackhole(True)
        assert _connect_error(link, closed_port).startswith("TimeoutError")
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
