"""A network emulator in user space: the wire between two interfaces, doing what
``tc qdisc … netem delay … loss … rate … limit …`` does on egress, for kernels built without
``sch_netem`` (this project's development VM is one). ``central.netlink`` runs it inside a
namespace of its own, between the gateway's veth and the root namespace's veth.

    ip netns exec <wire-ns> python -m central.netwire <ifname-a> <ifname-b>

Every Ethernet frame that arrives on one interface is sent out of the other, per direction:
dropped with probability ``loss``; dropped if ``limit`` frames already wait (drop-tail);
otherwise serialised at ``rate_bps`` behind the frames before it, then held for ``delay_ms``
(netem's order: rate, then delay). No reordering, no duplication, no corruption.
``blackhole`` drops every frame both ways without a word to either end (no RST, no ICMP): a
half-open path. ARP frames pass at once, whatever the shape: they are the emulation's own
plumbing (veths are Ethernet; a modem's IP link has no ARP), so a dead path looks to a
connecting gateway like an IP path that does not answer (its SYNs time out) rather than a
neighbour that does not resolve. Both ends' TCP stacks are the kernel's, so retransmissions,
congestion control and TLS records are real, and the interfaces' byte counters count them.

Frames are read with their virtio-net header (``PACKET_VNET_HDR``) and written with it, so a
frame whose checksum the sending veth left to "hardware" (``CHECKSUM_PARTIAL``) still arrives
with a valid checksum. The sending ends must not build GSO super-frames (``gso_max_segs 1`` on
the veths: ``central.netlink`` sets it): a frame here is a packet on the wire.

Control, one JSON object per line on stdin, answered by one JSON line on stdout:
``{"a_to_b": {shape}, "b_to_a": {shape}}`` (either or both), ``{"blackhole": true|false}``,
``{"stats": true}``. A shape is ``{"delay_ms", "loss", "rate_bps", "limit"}`` (``rate_bps`` 0:
unlimited). The process exits when stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
VNET_HDR_LEN = 10  # struct virtio_net_hdr, before each frame
MAX_FRAME = 65536 + VNET_HDR_LEN
ETHERTYPE = slice(VNET_HDR_LEN + 12, VNET_HDR_LEN + 14)  # where a frame says what it carries
ARP = b"\x08\x06"
BURST = 256  # frames read from one socket before looking at the clock again


@dataclass(frozen=True)
class Shape:
    """One direction of a link, in netem's terms."""

    delay_ms: float = 0.0
    loss: float = 0.0  # probability that a frame is lost, 0..1
    rate_bps: int = 0  # 0: no rate limit
    limit: int = 1000  # frames queued or in flight at most (netem's default)

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or not 0 <= self.loss <= 1 or self.rate_bps < 0 or self.limit < 1:
            raise ValueError(f"impossible link shape: {self}")


@dataclass
class Direction:
    """Frames going one way: a FIFO of (departure time, frame)."""

    out: socket.socket
    shape: Shape = field(default_factory=Shape)
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    free_at: float = 0.0  # when the sender finishes serialising what it holds
    forwarded: int = 0
    lost: int = 0  # dropped by `loss`
    overflow: int = 0  # dropped by `limit`
    blackholed: int = 0
    send_errors: int = 0

    def offer(self, frame: bytes, now: float, rng: random.Random, blackhole: bool) -> None:
        if blackhole:
            self.blackholed += 1
            return
        if self.shape.loss and rng.random() < self.shape.loss:
            self.lost += 1
            return
        if len(self.queue) >= self.shape.limit:
            self.overflow += 1
            return
        start = max(now, self.free_at)
        if self.shape.rate_bps:
            start += (len(frame) - VNET_HDR_LEN) * 8 / self.shape.rate_bps
        self.free_at = start
        self.queue.append((start + self.shape.delay_ms / 1000, frame))

    def send_due(self, now: float) -> float | None:
        """Send what is due; the next departure time, if any frame waits."""
        while self.queue and self.queue[0][0] <= now:
            _, frame = self.queue.popleft()
            try:
                self.out.send(frame)
                self.forwarded += 1
            except OSError:  # the far end is down or its queue is full: lost on the wire
                self.send_errors += 1
        return self.queue[0][0] if self.queue else None

    def stats(self) -> dict[str, int]:
        return {
            "forwarded": self.forwarded,
            "lost": self.lost,
            "overflow": self.overflow,
            "blackholed": self.blackholed,
            "send_errors": self.send_errors,
            "queued": len(self.queue),
        }


def open_port(ifname: str) -> socket.socket:
    """A raw socket that takes every frame arriving on ``ifname`` and sends frames out of it."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not the frames we send ourselves
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


class Wire:
    def __init__(self, a: str, b: str, seed: int | None = None) -> None:
        self.port_a, self.port_b = open_port(a), open_port(b)
        self.a_to_b = Direction(self.port_b)
        self.b_to_a = Direction(self.port_a)
        self.blackhole = False
        self.rng = random.Random(seed)

    def control(self, line: str) -> dict[str, object]:
        msg = json.loads(line)
        if "a_to_b" in msg:
            self.a_to_b.shape = Shape(**msg["a_to_b"])
        if "b_to_a" in msg:
            self.b_to_a.shape = Shape(**msg["b_to_a"])
        if "blackhole" in msg:
            self.blackhole = bool(msg["blackhole"])
        return {
            "ok": True,
            "blackhole": self.blackhole,
            "a_to_b": {**asdict(self.a_to_b.shape), **self.a_to_b.stats()},
            "b_to_a": {**asdict(self.b_to_a.shape), **self.b_to_a.stats()},
        }

    def _read(self, sock: socket.socket, direction: Direction) -> None:
        for _ in range(BURST):
            try:
                frame, addr = sock.recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:  # kernels without PACKET_IGNORE_OUTGOING
                continue
            if frame[ETHERTYPE] == ARP:
                with contextlib.suppress(OSError):
                    direction.out.send(frame)
                continue
            direction.offer(frame, time.monotonic(), self.rng, self.blackhole)

    def run(self, control_fd: int) -> None:
        poller = select.poll()
        for fd in (self.port_a.fileno(), self.port_b.fileno(), control_fd):
            poller.register(fd, select.POLLIN)
        pending = b""
        while True:
            now = time.monotonic()
            due = [t for t in (self.a_to_b.send_due(now), self.b_to_a.send_due(now)) if t]
            timeout_ms = max(0, (min(due) - time.monotonic()) * 1000) if due else None
            for fd, _ in poller.poll(timeout_ms):
                if fd == self.port_a.fileno():
                    self._read(self.port_a, self.a_to_b)
                elif fd == self.port_b.fileno():
                    self._read(self.port_b, self.b_to_a)
                else:
                    chunk = os.read(control_fd, 4096)
                    if not chunk:
                        return  # the owner is gone: so is the wire
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip():
                            answer = self.control(line.decode())
                            sys.stdout.write(json.dumps(answer) + "\n")
                            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", help="one interface (in this process's namespace)")
    parser.add_argument("b", help="the other interface")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loss draws")
    args = parser.parse_args()
    wire = Wire(args.a, args.b, args.seed)
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    wire.run(sys.stdin.fileno())


if __name__ == "__main__":
    main()
