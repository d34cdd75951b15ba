"""A DLMS/COSEM client (IEC 62056-5-3/-6-2) over TCP with the WRAPPER transport: standard
library only.

What a data concentrator needs to read meters, and nothing more: an association with logical
name referencing, without security or with a LOW (password) authentication; GET of one attribute
(``GET-Request-Normal``), with selective access by range (a load profile between two times);
long answers in blocks (``GET-Request-Next``); release. Ciphered associations (HLS-GMAC) are not
spoken: they need AES-GCM, which the gateway's standard library does not have.

Every answer is checked before a value is taken: the WRAPPER header (version, ports, a length at
most :data:`MAX_APDU`), the APDU tag, the invoke id, the block numbers; a meter that answers
anything else raises :class:`DlmsError` and the connection is dropped.
"""

from __future__ import annotations

import socket
import struct
import time
from datetime import datetime
from typing import Any

from edge_agent.meters import axdr, recv_exactly
from edge_agent.meters.axdr import Typed

WRAPPER_VERSION = 1
MAX_APDU = 0xFFFF  # the WRAPPER length field
MAX_BLOCKS = 10_000  # a profile longer than this many blocks is refused, not read forever
MAX_ANSWER_BYTES = 4 << 20  # nor one longer than this (two days of a 15-minute profile: ~4 kB)
# Application context: logical name referencing, no ciphering (2.16.756.5.8.1.1)
LN_NO_CIPHERING = bytes.fromhex("60857405080101")
MECHANISM_LOW = bytes.fromhex("60857405080201")  # 2.16.756.5.8.2.1
# Conformance (24 bits, bit 0 the most significant): the services used here
BLOCK_TRANSFER_WITH_GET = 1 << (23 - 11)
GET = 1 << (23 - 19)
SELECTIVE_ACCESS = 1 << (23 - 21)
CONFORMANCE = BLOCK_TRANSFER_WITH_GET | GET | SELECTIVE_ACCESS
CLIENT_MAX_PDU = 1024

AARQ, AARE, RLRQ, RLRE = 0x60, 0x61, 0x62, 0x63
GET_REQUEST, GET_RESPONSE = 0xC0, 0xC4
EXCEPTION_RESPONSE, CONFIRMED_SERVICE_ERROR = 0xD8, 0x0E

DATA_ACCESS_RESULTS = {
    1: "hardware-fault",
    2: "temporary-failure",
    3: "read-write-denied",
    4: "object-undefined",
    9: "object-class-inconsistent",
    11: "object-unavailable",
    12: "type-unmatched",
    13: "scope-of-access-violated",
    14: "data-block-unavailable",
    15: "long-get-aborted",
    16: "no-long-get-in-progress",
    250: "other-reason",
}

CLOCK = (8, "0.0.1.0.0.255")
ACTIVE_ENERGY_IMPORT = (3, "1.0.1.8.0.255")
LOAD_PROFILE = (7, "1.0.99.1.0.255")
UNIT_WH = 30  # DLMS unit enumeration: active energy in Wh


class DlmsError(Exception):
    """A request that got no valid answer, or an answer the meter refused to give."""


class AssociationRefused(DlmsError):
    pass


class DataAccessError(DlmsError):
    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"data-access-result {code}: {DATA_ACCESS_RESULTS.get(code, 'unknown')}")


def _ber(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + axdr.encode_length(len(content)) + content


def initiate_request(max_pdu: int = CLIENT_MAX_PDU) -> bytes:
    """xDLMS InitiateRequest: no dedicated key, response allowed (default), no QoS, version 6,
    the proposed conformance, the client's max receive PDU size."""
    return (
        bytes([0x01, 0x00, 0x00, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00])
        + CONFORMANCE.to_bytes(3, "big")
        + max_pdu.to_bytes(2, "big")
    )


def aarq(password: bytes | None = None, max_pdu: int = CLIENT_MAX_PDU) -> bytes:
    parts = _ber(0xA1, _ber(0x06, LN_NO_CIPHERING))
    if password is not None:
        parts += _ber(0x8A, b"\x07\x80")  # acse-requirements: authentication
        parts += _ber(0x8B, MECHANISM_LOW)
        parts += _ber(0xAC, _ber(0x80, password))
    parts += _ber(0xBE, _ber(0x04, initiate_request(max_pdu)))
    return _ber(AARQ, parts)


def _ber_items(data: bytes) -> dict[int, bytes]:
    """The tagged items of a BER sequence's content (one level; the tags used here are one
    byte)."""
    r = axdr.Reader(data)
    items: dict[int, bytes] = {}
    while r.left():
        tag = r.byte()
        items[tag] = r.take(r.length())
    return items


def parse_aare(apdu: bytes) -> int:
    """An AARE → the server's max receive PDU size; raises if the association was refused."""
    r = axdr.Reader(apdu)
    if r.byte() != AARE:
        raise DlmsError(f"not an AARE: {apdu[:1].hex()}")
    items = _ber_items(r.take(r.length()))
    result = items.get(0xA2, b"")
    if len(result) != 3 or result[:2] != b"\x02\x01":
        raise DlmsError("AARE without a result")
    diagnostic = items.get(0xA3, b"")
    if result[2] != 0:
        reason = diagnostic[-1] if diagnostic else -1
        raise AssociationRefused(f"association refused: result {result[2]}, diagnostic {reason}")
    info = items.get(0xBE)
    if info is None or len(info) < 2 or info[0] != 0x04:
        raise DlmsError("AARE without user-information")
    initiate = axdr.Reader(info)
    initiate.byte()
    body = initiate.take(initiate.length())
    if body[:1] == bytes([CONFIRMED_SERVICE_ERROR]):
        raise AssociationRefused(f"xDLMS initiate refused: {body.hex()}")
    # 08, QoS (00 absent), version, 5F 1F 04 00 + 3 conformance bytes, max PDU (2), vaa (2)
    if len(body) < 14 or body[0] != 0x08:
        raise DlmsError(f"not an InitiateResponse: {body.hex()}")
    at = 2 if body[1] == 0x00 else 3
    if body[at + 1 : at + 4] != b"\x5f\x1f\x04":
        raise DlmsError(f"InitiateResponse without conformance: {body.hex()}")
    return int.from_bytes(body[at + 8 : at + 10], "big")


def range_descriptor(start: datetime, end: datetime, clock: tuple[int, str] = CLOCK) -> bytes:
    """Selective access by range (selector 1) on a profile whose first capture object is the
    clock's time (attribute 2)."""
    class_id, ln = clock
    restricting = [Typed(axdr.UINT16, class_id), axdr.obis(ln), Typed(axdr.INT8, 2),
                   Typed(axdr.UINT16, 0)]  # fmt: skip
    return bytes([0x01]) + axdr.encode(
        [
            restricting,
            axdr.encode_datetime(start),
            axdr.encode_datetime(end),
            Typed(axdr.ARRAY, []),
        ]
    )


def get_request(invoke: int, class_id: int, ln: str, attribute: int, access: bytes = b"") -> bytes:
    head = bytes([GET_REQUEST, 0x01, invoke]) + struct.pack(">H", class_id) + axdr.obis(ln)
    return head + bytes([attribute]) + (bytes([0x01]) + access if access else b"\x00")


def get_next(invoke: int, block: int) -> bytes:
    return bytes([GET_REQUEST, 0x02, invoke]) + struct.pack(">I", block)


class DlmsClient:
    """One association with one meter over TCP (WRAPPER). Not thread-safe: one per meter."""

    def __init__(
        self,
        host: str,
        port: int = 4059,
        *,
        client_sap: int = 16,
        server_sap: int = 1,
        password: bytes | None = None,
        timeout_s: float = 5.0,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        self.host, self.port = host, port
        self.client_sap, self.server_sap = client_sap, server_sap
        self.password = password
        self.timeout_s = timeout_s
        self.max_blocks = max_blocks
        self._sock: socket.socket | None = None
        self._invoke = 0
        self.server_max_pdu = 0

    # --- transport --------------------------------------------------------------------------

    def _exchange(self, apdu: bytes) -> bytes:
        if self._sock is None:
            raise DlmsError("not associated")
        header = struct.pack(">HHHH", WRAPPER_VERSION, self.client_sap, self.server_sap, len(apdu))
        try:
            self._sock.sendall(header + apdu)
            deadline = time.monotonic() + self.timeout_s
            version, src, dst, length = struct.unpack(">HHHH", self._recv(8, deadline))
            if version != WRAPPER_VERSION or src != self.server_sap or dst != self.client_sap:
                raise DlmsError(f"WRAPPER header {version}/{src}/{dst}: not from our meter")
            return self._recv(length, deadline)
        except (OSError, DlmsError) as exc:
            self.close()
            if isinstance(exc, TimeoutError | socket.timeout):
                raise DlmsError(
                    f"{self.host}:{self.port}: no answer in {self.timeout_s:g} s"
                ) from exc
            if isinstance(exc, OSError):
                raise DlmsError(f"{self.host}:{self.port}: {exc}") from exc
            raise

    def _recv(self, n: int, deadline: float) -> bytes:
        assert self._sock is not None
        try:
            return recv_exactly(self._sock, n, deadline)
        except ConnectionError as exc:
            raise DlmsError(f"{self.host}:{self.port}: {exc}") from exc

    # --- association ------------------------------------------------------------------------

    def associate(self) -> None:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise DlmsError(f"{self.host}:{self.port}: {exc}") from exc
        try:
            self.server_max_pdu = parse_aare(self._exchange(aarq(self.password)))
        except axdr.AxdrError as exc:
            self.close()
            raise DlmsError(f"{self.host}:{self.port}: AARE: {exc}") from exc
        except DlmsError:
            self.close()
            raise

    def release(self) -> None:
        """Release the association (RLRQ) and close; a meter that does not answer is closed
        anyway."""
        if self._sock is None:
            return
        try:
            self._exchange(_ber(RLRQ, b"\x80\x01\x00"))
        except DlmsError:
            pass
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> DlmsClient:
        self.associate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- GET --------------------------------------------------------------------------------

    def get(self, class_id: int, ln: str, attribute: int, access: bytes = b"") -> Any:
        """One attribute's value (decoded A-XDR), fetched in blocks when it is long."""
        try:
            return self._get(class_id, ln, attribute, access)
        except axdr.AxdrError as exc:
            self.close()
            raise DlmsError(f"{self.host}:{self.port}: {ln} attribute {attribute}: {exc}") from exc

    def _get(self, class_id: int, ln: str, attribute: int, access: bytes) -> Any:
        self._invoke = (self._invoke + 1) & 0x0F
        invoke = 0xC0 | self._invoke  # high priority, confirmed
        answer = self._exchange(get_request(invoke, class_id, ln, attribute, access))
        raw = bytearray()
        block = 0
        while True:
            r = axdr.Reader(answer)
            tag, kind = r.byte(), r.byte()
            if tag == EXCEPTION_RESPONSE or tag == CONFIRMED_SERVICE_ERROR:
                raise DlmsError(f"meter refused the request: {answer[:8].hex()}")
            if tag != GET_RESPONSE or r.byte() != invoke:
                raise DlmsError(f"not the answer to this GET: {answer[:4].hex()}")
            if kind == 0x01:  # normal
                if r.byte() != 0x00:
                    raise DataAccessError(r.byte())
                value = axdr.decode(r)
                if r.left():
                    raise DlmsError(f"{r.left()} bytes after the answer")
                return value
            if kind != 0x02:
                raise DlmsError(f"GET-Response kind {kind}")
            last, number = r.byte(), struct.unpack(">I", r.take(4))[0]
            if number != block + 1:
                raise DlmsError(f"block {number} after block {block}")
            if r.byte() != 0x00:
                raise DataAccessError(r.byte())
            raw += r.take(r.length())
            block = number
            if last:
                return axdr.decode_all(bytes(raw))
            if len(raw) > MAX_ANSWER_BYTES:
                raise DlmsError(f"answer longer than {MAX_ANSWER_BYTES} bytes")
            if block >= self.max_blocks:
                raise DlmsError(f"answer longer than {self.max_blocks} blocks")
            answer = self._exchange(get_next(invoke, block))

    def clock(self) -> datetime:
        raw = self.get(*CLOCK, 2)
        if not isinstance(raw, bytes):
            raise DlmsError(f"clock is not a date-time: {raw!r}")
        return axdr.decode_datetime(raw)[0]

    def energy_kwh(self, obj: tuple[int, str] = ACTIVE_ENERGY_IMPORT) -> float:
        """A register's value in kWh (its value scaled by its scaler_unit, unit Wh)."""
        return float(self.get(*obj, 2)) * self.scale_to_kwh(obj)

    def scale_to_kwh(self, obj: tuple[int, str] = ACTIVE_ENERGY_IMPORT) -> float:
        scaler_unit = self.get(*obj, 3)
        if (
            not isinstance(scaler_unit, list)
            or len(scaler_unit) != 2
            or not all(isinstance(v, int) for v in scaler_unit)
        ):
            raise DlmsError(f"scaler_unit of {obj[1]}: {scaler_unit!r}")
        scaler, unit = scaler_unit
        if unit != UNIT_WH or not -6 <= scaler <= 6:
            raise DlmsError(f"{obj[1]} is not active energy in Wh (unit {unit}, scaler {scaler})")
        return float(10.0**scaler / 1000.0)

    def profile(
        self, start: datetime, end: datetime, obj: tuple[int, str] = LOAD_PROFILE
    ) -> list[list[Any]]:
        """The profile's entries captured from ``start`` to ``end`` (both included)."""
        rows = self.get(*obj, 2, range_descriptor(start, end))
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise DlmsError("profile buffer is not an array of structures")
        return rows

    def capture_objects(self, obj: tuple[int, str] = LOAD_PROFILE) -> list[tuple[int, str, int]]:
        """(class id, logical name, attribute) of each column of the profile."""
        raw = self.get(*obj, 3)
        out = []
        try:
            for class_id, ln, attribute, _ in raw:
                out.append((int(class_id), axdr.obis_text(ln), int(attribute)))
        except (TypeError, ValueError) as exc:
            raise DlmsError(f"capture_objects of {obj[1]}: {raw!r}") from exc
        return out
