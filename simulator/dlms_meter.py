"""Simulated DLMS/COSEM meters over TCP (WRAPPER): the tests' and the benchmark's DLMS peer.

A small meter written for this project that speaks the real encoding of the objects a data
concentrator reads: the association (AARQ/AARE, logical name referencing, no security or a LOW
password), the clock (class 8, 0.0.1.0.0.255), the active energy import register (class 3,
1.0.1.8.0.255, in Wh) with its scaler_unit, and the load profile (class 7, 1.0.99.1.0.255: the
clock and the register every ``period_s``, ``memory_days`` kept) read whole or by range, in
blocks when the answer is longer than the client's PDU size (GET-Request-Next), and release.

Why not gurux-dlms's server classes: its ``GXDLMSServer.handleRequest`` fails in the WRAPPER
inactivity check (``int(datetime - datetime)``), ``initialize()`` fails on an empty association
list, ``GXServerReply`` lacks methods ``handleRequest`` calls, and its error handler hides the
real exception. Its *client* is independent of this meter and of the agent's client, and the
tests use it to read this meter (``tests/test_dlms.py``), so the encoding here is checked by
an implementation that shares nothing with ours.

The meter's clock is the injectable ``clock`` plus ``clock_offset_s`` (a meter whose clock is
far off). ``mode = "silent"`` stops answering.
"""

from __future__ import annotations

import argparse
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edge_agent.meters import axdr
from edge_agent.meters.axdr import Typed
from edge_agent.meters.dlms import (
    AARE,
    AARQ,
    ACTIVE_ENERGY_IMPORT,
    CLOCK,
    GET_REQUEST,
    GET_RESPONSE,
    LN_NO_CIPHERING,
    LOAD_PROFILE,
    MECHANISM_LOW,
    RLRE,
    RLRQ,
    UNIT_WH,
)
from simulator.serving import peer_clock, serve_until_stopped

log = logging.getLogger(__name__)

SERVER_MAX_PDU = 512
OBJECT_UNDEFINED, READ_WRITE_DENIED, NO_LONG_GET = 4, 3, 16


@dataclass
class DlmsMeter:
    kw: float = 1.0
    start_kwh: float = 1000.0
    period_s: int = 900
    memory_days: float = 10.0
    password: bytes | None = None
    clock: Callable[[], float] = time.time
    clock_offset_s: float = 0.0
    mode: str = "ok"  # or "silent"
    history_s: float = 0.0  # how long the meter has run already (its profile's history)
    _t0: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._t0 = self.clock() - self.history_s

    def now(self) -> float:
        """The meter's own clock."""
        return self.clock() + self.clock_offset_s

    def register_wh(self, at: float) -> int:
        """The register at meter time ``at`` (energy counts in true time, stamps in meter
        time)."""
        true = at - self.clock_offset_s
        return int(round((self.start_kwh + self.kw * (true - self._t0) / 3600.0) * 1000))

    def entries(self, start: float | None = None, end: float | None = None) -> list[list[object]]:
        now = self.now()
        first = max(now - self.memory_days * 86400, self._t0 + self.clock_offset_s)
        lo = first if start is None else max(first, start)
        hi = now if end is None else min(now, end)
        k = -(-int(lo) // self.period_s)
        rows = []
        while k * self.period_s <= hi:
            t = k * self.period_s
            rows.append(
                [
                    Typed(axdr.OCTET_STRING, axdr.encode_datetime(datetime.fromtimestamp(t, UTC))),
                    Typed(axdr.UINT32, self.register_wh(t)),
                ]
            )
            k += 1
        return rows


class _Session:
    def __init__(self, meter: DlmsMeter, sock: socket.socket) -> None:
        self.meter, self.sock = meter, sock
        self.associated = False
        self.client_pdu = SERVER_MAX_PDU
        self.pending: tuple[int, bytes, int] | None = None  # invoke, raw data, next block

    def run(self) -> None:
        with self.sock:
            while True:
                header = self._recv(8)
                if header is None:
                    return
                version, src, dst, length = struct.unpack(">HHHH", header)
                apdu = self._recv(length)
                if apdu is None or version != 1:
                    return
                if self.meter.mode == "silent":
                    continue
                answer = self.handle(apdu)
                if answer is None:
                    return
                self.sock.sendall(struct.pack(">HHHH", 1, dst, src, len(answer)) + answer)

    def _recv(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def handle(self, apdu: bytes) -> bytes | None:
        tag = apdu[0]
        if tag == AARQ:
            return self.aare(apdu)
        if tag == RLRQ:
            self.associated = False
            return bytes([RLRE, 0x03, 0x80, 0x01, 0x00])
        if tag == GET_REQUEST and self.associated:
            return self.get(apdu)
        return None  # anything else, or a GET before the association: hang up

    def aare(self, apdu: bytes) -> bytes:
        r = axdr.Reader(apdu)
        r.byte()
        body = axdr.Reader(r.take(r.length()))
        items: dict[int, bytes] = {}
        while body.left():
            t = body.byte()
            items[t] = body.take(body.length())
        context = items.get(0xA1, b"")[2:]
        password = None
        if items.get(0x8B, b"") == MECHANISM_LOW:
            auth = items.get(0xAC, b"")
            password = auth[2:] if auth[:1] == b"\x80" else b""
        ok = context == LN_NO_CIPHERING and password == self.meter.password
        initiate = items.get(0xBE, b"")[2:]
        if len(initiate) >= 2:
            self.client_pdu = max(64, int.from_bytes(initiate[-2:], "big"))
        self.associated = ok
        result = 0 if ok else 1
        diagnostic = 0 if ok else 13  # authentication-failure
        user_info = (
            bytes([0x08, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00, 0x00, 0x10, 0x1C])
            + SERVER_MAX_PDU.to_bytes(2, "big")
            + b"\x00\x07"
        )
        content = (
            bytes([0xA1, 0x09, 0x06, 0x07]) + LN_NO_CIPHERING
            + bytes([0xA2, 0x03, 0x02, 0x01, result])
            + bytes([0xA3, 0x05, 0xA1, 0x03, 0x02, 0x01, diagnostic])
            + bytes([0xBE, len(user_info) + 2, 0x04, len(user_info)]) + user_info
        )  # fmt: skip
        return bytes([AARE, len(content)]) + content

    def get(self, apdu: bytes) -> bytes:
        kind, invoke = apdu[1], apdu[2]
        if kind == 0x02:  # next block
            number = struct.unpack(">I", apdu[3:7])[0]
            if self.pending is None or self.pending[0] != invoke or self.pending[2] != number + 1:
                return bytes([GET_RESPONSE, 0x01, invoke, 0x01, NO_LONG_GET])
            return self.block(invoke)
        class_id = struct.unpack(">H", apdu[3:5])[0]
        ln = axdr.obis_text(apdu[5:11])
        attribute = apdu[11]
        selective = apdu[12:]
        value = self.value((class_id, ln), attribute, selective)
        if isinstance(value, int):
            return bytes([GET_RESPONSE, 0x01, invoke, 0x01, value])
        room = self.client_pdu - 16
        if len(value) <= room:
            return bytes([GET_RESPONSE, 0x01, invoke, 0x00]) + value
        self.pending = (invoke, value, 1)
        return self.block(invoke)

    def block(self, invoke: int) -> bytes:
        assert self.pending is not None
        _, raw, number = self.pending
        size = self.client_pdu - 16
        chunk, rest = raw[:size], raw[size:]
        last = not rest
        self.pending = None if last else (invoke, rest, number + 1)
        return (
            bytes([GET_RESPONSE, 0x02, invoke, int(last)])
            + struct.pack(">I", number)
            + b"\x00"
            + axdr.encode_length(len(chunk))
            + chunk
        )

    def value(self, obj: tuple[int, str], attribute: int, selective: bytes) -> bytes | int:
        m = self.meter
        now = m.now()
        if obj == CLOCK and attribute == 2:
            return axdr.encode(Typed(axdr.OCTET_STRING, _dt(now)))
        if obj == ACTIVE_ENERGY_IMPORT and attribute == 2:
            return axdr.encode(Typed(axdr.UINT32, m.register_wh(now)))
        if obj == ACTIVE_ENERGY_IMPORT and attribute == 3:
            return axdr.encode([Typed(axdr.INT8, 0), Typed(axdr.ENUM, UNIT_WH)])
        if obj == LOAD_PROFILE and attribute == 3:
            columns = [(CLOCK, 2), (ACTIVE_ENERGY_IMPORT, 2)]
            return axdr.encode(
                Typed(
                    axdr.ARRAY,
                    [
                        [Typed(axdr.UINT16, c), axdr.obis(ln), Typed(axdr.INT8, a),
                         Typed(axdr.UINT16, 0)]
                        for (c, ln), a in columns
                    ],
                )
            )  # fmt: skip
        if obj == LOAD_PROFILE and attribute == 4:
            return axdr.encode(Typed(axdr.UINT32, m.period_s))
        if obj == LOAD_PROFILE and attribute == 2:
            start = end = None
            if selective[:1] == b"\x01":
                if selective[1] != 1:
                    return READ_WRITE_DENIED  # only selection by range
                try:
                    _, start_raw, end_raw, _ = axdr.decode_all(selective[2:])
                    start = axdr.decode_datetime(start_raw)[0].timestamp()
                    end = axdr.decode_datetime(end_raw)[0].timestamp()
                except (axdr.AxdrError, ValueError, TypeError):
                    return READ_WRITE_DENIED
            return axdr.encode(Typed(axdr.ARRAY, m.entries(start, end)))
        return OBJECT_UNDEFINED


def _dt(epoch: float) -> bytes:
    return axdr.encode_datetime(datetime.fromtimestamp(int(epoch), UTC))


class DlmsPeer:
    """Meters on TCP ports of 127.0.0.1 (one port per meter, as each has its own modem or
    address), each connection on a thread of its own."""

    def __init__(self, meters: list[DlmsMeter], ports: list[int]) -> None:
        self.meters = meters
        self.listeners: list[socket.socket] = []
        for port in ports:
            sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
            sock.settimeout(0.2)
            self.listeners.append(sock)
        self.ports = [s.getsockname()[1] for s in self.listeners]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(m, s), daemon=True)
            for m, s in zip(meters, self.listeners, strict=True)
        ]

    def _serve(self, meter: DlmsMeter, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=_Session(meter, conn).run, daemon=True).start()

    def start(self) -> DlmsPeer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for s in self.listeners:
            s.close()

    def __enter__(self) -> DlmsPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m simulator.dlms_meter",
        description="Serve simulated DLMS/COSEM meters (TCP, WRAPPER) until interrupted.",
    )
    p.add_argument("--meters", type=int, default=5, help="meters, one TCP port each")
    p.add_argument("--port", type=int, required=True, help="first port on 127.0.0.1")
    p.add_argument("--password", help="LOW authentication password of every meter")
    p.add_argument("--memory-days", type=float, default=10.0, help="load profile depth")
    p.add_argument(
        "--history-days", type=float, default=0.0, help="days the meters have run already"
    )
    p.add_argument("--epoch", type=float, help="the meters' clock at --t0 (default: now)")
    p.add_argument("--t0", type=float, help="wall time the clock starts from (default: now)")
    p.add_argument("--speed", type=float, default=1.0, help="meter seconds per real second")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    clock = peer_clock(args.epoch, args.t0, args.speed)
    password = args.password.encode() if args.password else None
    meters = [
        DlmsMeter(kw=0.2 + 0.137 * (i % 21), start_kwh=100.0 + 53.7 * i, password=password,
                  memory_days=args.memory_days, clock=clock, history_s=args.history_days * 86400)
        for i in range(args.meters)
    ]  # fmt: skip
    peer = DlmsPeer(meters, [args.port + i for i in range(args.meters)]).start()
    print(f"serving {args.meters} DLMS meters from port {args.port}", flush=True)
    serve_until_stopped()
    peer.stop()


if __name__ == "__main__":
    main()
