"""A Modbus client for reading registers, over TCP (MBAP) and RTU (serial, CRC-16): standard
library only, so it runs on the gateway's light install.

Only the two read functions a meter needs are spoken: 0x03 (holding registers) and 0x04 (input
registers), at most :data:`MAX_REGISTERS` per request. One transport is one bus: it sends one
request at a time and waits for its answer (an RTU bus is half-duplex, and a TCP-to-RTU gateway
serialises requests anyway). Every answer is checked (transaction id, unit, function, byte
count, CRC) before a value is taken from it; anything else raises :class:`ModbusError` and, on
TCP, drops the connection so a late answer to an abandoned request cannot be taken for the next.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import termios
import threading
import time
from typing import Literal, Protocol

from edge_agent.meters import recv_exactly

READ_HOLDING = 0x03
READ_INPUT = 0x04
FUNCTIONS = {"holding": READ_HOLDING, "input": READ_INPUT}
MAX_REGISTERS = 125  # the protocol's limit for one read request

EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """A request that got no valid answer."""


class ModbusTimeout(ModbusError):
    """No (complete) answer within the timeout."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception (a wrong address, a busy device)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code}: {EXCEPTIONS.get(code, 'unknown')}")


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def read_request(function: int, address: int, count: int) -> bytes:
    """The PDU of a read request."""
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError(f"not a read function: {function}")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_REGISTERS:
        raise ValueError(f"bad register range: {count} from {address}")
    if address + count > 0x10000:
        raise ValueError(f"register range past 65535: {count} from {address}")
    return struct.pack(">BHH", function, address, count)


def read_response(pdu: bytes, function: int, count: int) -> tuple[int, ...]:
    """The registers of a read answer; raises on an exception answer or a malformed one."""
    if len(pdu) >= 2 and pdu[0] == function | 0x80:
        raise ModbusExceptionResponse(pdu[1])
    if len(pdu) < 2 or pdu[0] != function:
        raise ModbusError(f"answer to another function ({pdu[:1].hex() or 'empty'})")
    if pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        raise ModbusError(f"answer holds {len(pdu) - 2} bytes, not {2 * count}")
    return struct.unpack(f">{count}H", pdu[2:])


class Transport(Protocol):
    """One bus: sends a request PDU to a unit and returns the answer's PDU."""

    def request(self, unit: int, pdu: bytes) -> bytes: ...

    def close(self) -> None: ...


def read_registers(
    transport: Transport, unit: int, function: int, address: int, count: int
) -> tuple[int, ...]:
    return read_response(
        transport.request(unit, read_request(function, address, count)), function, count
    )


class TcpTransport:
    """Modbus TCP: MBAP header (transaction id, protocol 0, length, unit) + PDU. Connects on
    first use and again after any error."""

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._tid = 0
        self._lock = threading.Lock()

    def request(self, unit: int, pdu: bytes) -> bytes:
        with self._lock:
            try:
                return self._request(unit, pdu)
            except (OSError, ModbusError) as exc:
                self.close()
                if isinstance(exc, TimeoutError | socket.timeout):
                    raise ModbusTimeout(self._no_answer()) from exc
                if isinstance(exc, OSError):
                    raise ModbusError(f"{self.host}:{self.port}: {exc}") from exc
                raise

    def _request(self, unit: int, pdu: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tid = (self._tid + 1) & 0xFFFF
        self._sock.sendall(struct.pack(">HHHB", self._tid, 0, len(pdu) + 1, unit) + pdu)
        tid, proto, length, got_unit = struct.unpack(">HHHB", self._recv(7, deadline))
        if proto != 0 or not 2 <= length <= 254:
            raise ModbusError(f"not a Modbus TCP answer (protocol {proto}, length {length})")
        body = self._recv(length - 1, deadline)
        if tid != self._tid or got_unit != unit:
            raise ModbusError(
                f"answer to transaction {tid} unit {got_unit}, not {self._tid}/{unit}"
            )
        return body

    def _recv(self, n: int, deadline: float) -> bytes:
        assert self._sock is not None
        try:
            return recv_exactly(self._sock, n, deadline)
        except TimeoutError as exc:
            raise ModbusTimeout(self._no_answer()) from exc
        except ConnectionError as exc:
            raise ModbusError(f"{self.host}:{self.port}: {exc}") from exc

    def _no_answer(self) -> str:
        return f"{self.host}:{self.port}: no complete answer within {self.timeout_s:g} s"

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


_BAUDS = {
    1200: termios.B1200,
    2400: termios.B2400,
    4800: termios.B4800,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
}
Parity = Literal["N", "E", "O"]


class RtuTransport:
    """Modbus RTU on a serial port (RS-485 adapter, or a pty in the tests): unit + PDU + CRC,
    frames separated by 3.5 characters of silence. The port opens on first use and again after
    an I/O error (an unplugged USB adapter)."""

    def __init__(
        self,
        device: str,
        baudrate: int = 9600,
        parity: Parity = "N",
        stopbits: int = 1,
        timeout_s: float = 1.0,
    ) -> None:
        if baudrate not in _BAUDS:
            raise ValueError(f"baud rate {baudrate} not one of {tuple(_BAUDS)}")
        self.device, self.baudrate, self.parity = device, baudrate, parity
        self.stopbits, self.timeout_s = stopbits, timeout_s
        bits = 1 + 8 + (parity != "N") + stopbits
        self.char_s = bits / baudrate
        # 3.5 characters between frames; the standard fixes 1.75 ms above 19,200 baud
        self.silence_s = 3.5 * self.char_s if baudrate <= 19200 else 0.00175
        self._fd: int | None = None
        self._last_io = 0.0
        self._lock = threading.Lock()

    def _open(self) -> int:
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            attrs = termios.tcgetattr(fd)
            iflag, oflag, cflag, lflag = 0, 0, termios.CS8 | termios.CREAD | termios.CLOCAL, 0
            if self.parity != "N":
                cflag |= termios.PARENB | (termios.PARODD if self.parity == "O" else 0)
            if self.stopbits == 2:
                cflag |= termios.CSTOPB
            speed = _BAUDS[self.baudrate]
            cc = attrs[6]
            cc[termios.VMIN], cc[termios.VTIME] = 0, 0
            termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
        except termios.error as exc:  # not a serial port
            os.close(fd)
            raise ModbusError(f"{self.device}: not a serial port ({exc})") from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    def request(self, unit: int, pdu: bytes) -> bytes:
        with self._lock:
            try:
                return self._request(unit, pdu)
            except (OSError, termios.error) as exc:  # an adapter unplugged: open it again
                self.close()
                raise ModbusError(f"{self.device}: {exc}") from exc

    def _request(self, unit: int, pdu: bytes) -> bytes:
        if self._fd is None:
            self._fd = self._open()
        fd = self._fd
        wait = self._last_io + self.silence_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        termios.tcflush(fd, termios.TCIFLUSH)  # a late answer to an abandoned request
        frame = bytes([unit]) + pdu
        frame += struct.pack("<H", crc16(frame))
        os.write(fd, frame)
        # the answer can only start after the request is on the wire
        deadline = time.monotonic() + len(frame) * self.char_s + self.timeout_s
        try:
            answer = self._read_frame(fd, unit, deadline)
        finally:
            self._last_io = time.monotonic()
        return answer

    def _read_frame(self, fd: int, unit: int, deadline: float) -> bytes:
        data = b""
        need = 5  # unit, function, then an exception code or a byte count; CRC
        while len(data) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ModbusTimeout(f"{self.device}: unit {unit}: no answer")
            data += os.read(fd, 256)
            if len(data) >= 3 and not data[1] & 0x80:
                need = 5 + data[2]
        if len(data) > need:
            raise ModbusError(f"{self.device}: unit {unit}: {len(data) - need} bytes too many")
        if struct.unpack("<H", data[-2:])[0] != crc16(data[:-2]):
            raise ModbusError(f"{self.device}: unit {unit}: CRC mismatch")
        if data[0] != unit:
            raise ModbusError(f"{self.device}: answer from unit {data[0]}, not {unit}")
        return data[1:-2]

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
