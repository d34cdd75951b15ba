"""A real network path on this machine, for the link tests and ``python -m bench.link``: a
gateway network namespace joined to the root namespace through an emulated link.

    gateway namespace          wire namespace                       root namespace
    eg<id> gateway_ip ─ veth ─ ea<id> ═ central.netwire ═ eb<id> ─ veth ─ er<id> central_ip

(the two addresses of a /30 of 10.213.0.0/16 that no interface uses).

A process started with :meth:`Link.popen` runs in the gateway namespace and reaches the root
namespace only through the wire, whose shape (delay, loss, rate, queue limit per direction;
``central.netwire``) the caller sets and changes at will; the broker listens in the root
namespace on ``central_ip`` (:class:`LinkBroker`). The gateway's kernel TCP/TLS stack does the
talking, so what crosses the link is what a gateway would send over a modem, and the byte
counters of its interface (:meth:`Link.counters`) count it all: MQTT, TLS records and
handshakes, TCP headers, retransmissions, acks.

Why a wire process and not ``tc qdisc … netem``: the kernels this was written on (a Firecracker
VM's) are built without ``sch_netem``, and the emulator behaves the same on every kernel.

Faults: :meth:`Link.down` / :meth:`Link.up` take the gateway's interface down and up (the modem
losing its link: the gateway's stack knows, connects fail at once); :meth:`Link.blackhole` drops
every frame both ways without a word to either end (a half-open path: no RST, no ICMP; only a
timer notices). :class:`Flapping` takes the link down periodically from a thread.

Needs root (``CAP_NET_ADMIN``) and iproute2; :func:`unavailable` says why not. Names are unique
per run (several runs side by side do not collide), and :meth:`Link.close` always deletes both
namespaces, which takes the veths with them; namespaces a killed run left behind are deleted
by the next run (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from central.local_services import REPO, SecureMosquitto, answers, mosquitto_binary
from central.netwire import Shape
from central.pki import Pki

log = logging.getLogger(__name__)

#: Link shapes by name, the same both ways (netem on both ends' egress): ``3g`` is a UMTS
#: uplink as gateways in the field see it, ≈300 ms round trip, 1 % of frames lost each way,
#: 384 kbit/s each way.
PROFILES: dict[str, Shape] = {
    "lan": Shape(),
    "3g": Shape(delay_ms=150, loss=0.01, rate_bps=384_000),
}

NETWORK = ipaddress.IPv4Network("10.213.0.0/16")  # where the links' /30s come from
PREFIX = "eiot-link-"
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-(\d+)-[gw]$")
ETHERNET_HEADER = 14  # bytes per frame in the counters that no IP link carries


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` fails: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Delete the link namespaces of runs that are gone (their creator's pid is dead)."""
    gone = []
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(2))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            gone.append(name)
    return gone


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of :data:`NETWORK` that no interface of the root namespace uses."""
    used = {
        ipaddress.ip_interface(addr).network
        for addr in re.findall(r"inet (\S+)", _run("ip", "-4", "-o", "addr", "show"))
    }
    subnets = list(NETWORK.subnets(new_prefix=30))
    for _ in range(100):
        net = secrets.choice(subnets)
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /30 in {NETWORK}")


@dataclass(frozen=True)
class Counters:
    """An interface's counters (bytes include each frame's 14-byte Ethernet header)."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.rx_bytes - other.rx_bytes,
            self.tx_bytes - other.tx_bytes,
            self.rx_packets - other.rx_packets,
            self.tx_packets - other.tx_packets,
        )

    @property
    def packets(self) -> int:
        return self.rx_packets + self.tx_packets

    @property
    def ip_bytes(self) -> int:
        """Both ways, IP packets whole (IP and TCP headers, TLS, MQTT), no Ethernet header:
        what a modem's IP link carries and an operator bills."""
        return self.rx_bytes + self.tx_bytes - ETHERNET_HEADER * self.packets


class Link:
    """A gateway namespace, the wire, the root end (see the module docstring). A context
    manager: ``with Link() as link: …`` deletes everything on the way out, also on failure."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        base = f"{PREFIX}{self.token}-{os.getpid()}"  # the pid: whose namespaces (sweep)
        self.gateway_ns, self.wire_ns = f"{base}-g", f"{base}-w"
        self.gateway_if, self.central_if = f"eg{self.token}", f"er{self.token}"
        self._wire_a, self._wire_b = f"ea{self.token}", f"eb{self.token}"
        self.gateway_ip = self.central_ip = ""
        self._wire: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one control exchange with the wire at a time
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Link:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building and tearing down ------------------------------------------------------

    def create(self) -> None:
        sweep()
        try:
            self._build()
            self._start_wire()
        except BaseException:
            self.close()
            raise
        log.info(
            "link %s: gateway %s (%s) - wire - root %s (%s)",
            self.token,
            self.gateway_ip,
            self.gateway_ns,
            self.central_ip,
            self.central_if,
        )

    def _build(self) -> None:
        g, w = self.gateway_ns, self.wire_ns
        _run("ip", "netns", "add", g)
        _run("ip", "netns", "add", w)
        veth = ("type", "veth", "peer", "name")
        _run("ip", "link", "add", self.gateway_if, "netns", g, *veth, self._wire_a, "netns", w)
        _run("ip", "link", "add", self.central_if, *veth, self._wire_b, "netns", w)
        # No IPv6 on the link: its router solicitations and the like would count as traffic.
        for ns in (g, w):
            self._sysctl(ns, "net/ipv6/conf/all/disable_ipv6", "1")
            self._sysctl(ns, "net/ipv6/conf/default/disable_ipv6", "1")
        self._sysctl(None, f"net/ipv6/conf/{self.central_if}/disable_ipv6", "1")
        # The two TCP senders' interfaces: one packet per frame (no GSO super-frames), so the
        # wire shapes packets and the counters count every packet's headers.
        _run("ip", "-n", g, "link", "set", self.gateway_if, "gso_max_segs", "1")
        _run("ip", "link", "set", self.central_if, "gso_max_segs", "1")
        net = _free_subnet()
        hosts = list(net.hosts())
        self.central_ip, self.gateway_ip = str(hosts[0]), str(hosts[1])
        _run("ip", "addr", "add", f"{self.central_ip}/30", "dev", self.central_if)
        _run("ip", "-n", g, "addr", "add", f"{self.gateway_ip}/30", "dev", self.gateway_if)
        _run("ip", "link", "set", self.central_if, "up")
        _run("ip", "-n", w, "link", "set", self._wire_a, "up")
        _run("ip", "-n", w, "link", "set", self._wire_b, "up")
        _run("ip", "-n", g, "link", "set", "lo", "up")
        _run("ip", "-n", g, "link", "set", self.gateway_if, "up")

    @staticmethod
    def _sysctl(ns: str | None, key: str, value: str) -> None:
        path = f"/proc/sys/{key}"
        prefix = ["ip", "netns", "exec", ns] if ns else []
        # a kernel without IPv6 has no such file: nothing to switch off
        subprocess.run([*prefix, "sh", "-c", f"[ ! -e {path} ] || echo {value} > {path}"])

    def _start_wire(self) -> None:
        wire = [sys.executable, "-m", "central.netwire", self._wire_a, self._wire_b]
        self._wire = subprocess.Popen(
            ["ip", "netns", "exec", self.wire_ns, *wire],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        ready = self._answer()
        if not ready.get("ready"):
            raise RuntimeError(f"the wire did not start: {ready}")

    def close(self) -> None:
        """Stop what runs in the namespaces (the wire, processes started by :meth:`popen`)
        and delete both namespaces (the veths go with them). Never raises."""
        for proc in [*self._procs, *([self._wire] if self._wire else [])]:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
        if self._wire:
            for pipe in (self._wire.stdin, self._wire.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for ns in (self.gateway_ns, self.wire_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        # the root end leaves with its peer in the wire namespace; make sure it is gone
        subprocess.run(["ip", "link", "del", self.central_if], capture_output=True)

    # --- the wire -----------------------------------------------------------------------

    def _answer(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self._wire is not None and self._wire.stdout is not None
        out: IO[bytes] = self._wire.stdout
        ready, _, _ = select.select([out], [], [], timeout)
        line = out.readline() if ready else b""
        if not line:
            raise RuntimeError(f"the wire of link {self.token} does not answer")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _control(self, **msg: Any) -> dict[str, Any]:
        with self._lock:
            assert self._wire is not None and self._wire.stdin is not None
            self._wire.stdin.write(json.dumps(msg).encode() + b"\n")
            self._wire.stdin.flush()
            return self._answer()

    def shape(self, up: Shape, down: Shape | None = None) -> dict[str, Any]:
        """``up``: gateway → central; ``down``: central → gateway (default: like ``up``)."""
        return self._control(
            a_to_b=_shape_dict(up), b_to_a=_shape_dict(down if down is not None else up)
        )

    def profile(self, name: str) -> dict[str, Any]:
        return self.shape(PROFILES[name])

    def blackhole(self, on: bool = True) -> dict[str, Any]:
        """Half-open: every frame dropped both ways, silently. ``on=False`` heals it."""
        return self._control(blackhole=on)

    def stats(self) -> dict[str, Any]:
        """The wire's shape and counts per direction (``a_to_b`` is upstream)."""
        return self._control(stats=True)

    # --- the gateway's interface --------------------------------------------------------

    def down(self) -> None:
        _run("ip", "-n", self.gateway_ns, "link", "set", self.gateway_if, "down")

    def up(self) -> None:
        _run("ip", "-n", self.gateway_ns, "link", "set", self.gateway_if, "up")

    def counters(self) -> Counters:
        """The gateway interface's counters (both ways of the link)."""
        link = json.loads(
            _run("ip", "-n", self.gateway_ns, "-s", "-j", "link", "show", self.gateway_if)
        )[0]
        s = link["stats64"]
        return Counters(s["rx"]["bytes"], s["tx"]["bytes"], s["rx"]["packets"], s["tx"]["packets"])

    def established(self, port: int) -> int:
        """TCP connections from the gateway namespace to ``port`` that are established."""
        out = _run(*self.command(["ss", "-Htn", "state", "established", f"( dport = :{port} )"]))
        return len(out.splitlines())

    # --- processes in the gateway namespace ---------------------------------------------

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.gateway_ns, *argv]

    def popen(
        self, args: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """``python <args>`` from the repository, in the gateway namespace, with ``env`` added
        (and this repository on PYTHONPATH), output appended to ``log_path``. Stopped by
        :meth:`close` if still running."""
        with log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                self.command([sys.executable, *args]),
                env={**os.environ, **env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self._procs.append(proc)
        return proc


def _shape_dict(shape: Shape) -> dict[str, Any]:
    return {
        "delay_ms": shape.delay_ms,
        "loss": shape.loss,
        "rate_bps": shape.rate_bps,
        "limit": shape.limit,
    }


class Flapping:
    """Takes ``link`` down for ``down_s`` every ``period_s`` seconds, the first time
    ``first_down_s`` after the start, from a thread, until :meth:`stop` (which leaves the link
    up). ``outages`` holds (down, up) times (``time.time()``)."""

    def __init__(
        self, link: Link, period_s: float, down_s: float, first_down_s: float = 0.0
    ) -> None:
        if not 0 < down_s < period_s:
            raise ValueError("need 0 < down_s < period_s")
        self.link, self.period_s, self.down_s = link, period_s, down_s
        self.first_down_s = first_down_s
        self.outages: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flapping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            down_at = t0 + self.first_down_s + n * self.period_s
            if self._stop.wait(max(0.0, down_at - time.monotonic())):
                return
            self.link.down()
            went_down = time.time()
            self._stop.wait(max(0.0, down_at + self.down_s - time.monotonic()))
            self.link.up()
            self.outages.append((went_down, time.time()))
            n += 1
            if self._stop.is_set():
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class LinkBroker(SecureMosquitto):
    """The secure broker (TLS, client certificates, the shipped ACL) listening on the root
    end of ``link`` only, with a broker certificate for that address (issued in ``pki`` if it
    has none), so agents on the gateway side verify it as they would in the field."""

    def __init__(self, state_dir: Path, pki: Pki, topic_root: str, host: str) -> None:
        from central.broker import BrokerFiles

        name = f"link-{host}"
        pki.ensure(name, "broker", hosts=(host,))
        super().__init__(state_dir, pki.dir, topic_root)
        self.files = BrokerFiles(pki_dir=pki.dir, state_dir=state_dir, name=name)
        self.host = host

    def start(self) -> None:
        from central.broker import write_broker

        conf = write_broker(
            self.files,
            self.topic_root,
            port=self.port,
            bind=self.host,
            user="root" if os.geteuid() == 0 else None,
            log_dest=f"file {self.log_file}",
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], cwd=self.files.state_dir
        )
        deadline = time.monotonic() + 20
        while not answers(self.port, self.host):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker does not answer on {self.host}:{self.port}")
            time.sleep(0.1)
