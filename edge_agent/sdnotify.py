"""systemd's notify protocol, with the standard library only: ``READY=1`` once the agent runs,
``WATCHDOG=1`` from its main loop, ``STOPPING=1`` on the way out, ``STATUS=`` for
``systemctl status``.

Under ``Type=notify`` and ``WatchdogSec=`` (``deploy/gateway/eiot-agent.service``) systemd sets
``NOTIFY_SOCKET`` (a datagram socket path, or an abstract one starting with ``@``) and
``WATCHDOG_USEC``; a main loop that stops turning stops the pings, and systemd kills and
restarts the agent. The pings come from the loop itself, not from a thread of their own, so a
hung loop is seen. Without ``NOTIFY_SOCKET`` (a shell, the tests' rig) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address or None
        # ping twice per watchdog period, as sd_watchdog_enabled(3) advises
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping: float | None = None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def still_starting(self, text: str, seconds: float) -> None:
        """Not ready yet and waiting on purpose (a full card): ask for ``seconds`` more than
        ``TimeoutStartSec`` before systemd gives up on the start, and say why."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}\nSTATUS={text}")

    def tick(self, mono: float) -> None:
        """From the main loop, every turn: a watchdog ping when one is due."""
        if self.watchdog_s is None:
            return
        if self._last_ping is None or mono - self._last_ping >= self.watchdog_s:
            self._last_ping = mono
            self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or restarting: nothing to do but say so
            log.warning("cannot notify systemd (%s): %s", self._address, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
