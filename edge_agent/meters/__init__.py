"""Talking to meters directly: Modbus (``modbus``, register maps in ``register_map``) and
DLMS/COSEM (``axdr``, ``dlms``), standard library and pydantic only (the gateway's light install).

The limits below are what the settings check; the protocol modules import only when a gateway
reads meters (the agent's resident memory stays where it was for those that do not).
"""

from __future__ import annotations

import socket
import time

#: Modbus unit ids a meter may have on a bus: 0 is broadcast (no answer), 248-255 are reserved.
UNIT_IDS = range(1, 248)
#: Serial line speeds of a Modbus RTU bus (``edge_agent.meters.modbus`` maps each to termios).
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    """``n`` bytes from ``sock`` by ``deadline`` (``time.monotonic``): raises
    :class:`TimeoutError` when they are late, :class:`ConnectionError` when the peer hangs up."""
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data
