"""DLMS/COSEM data in A-XDR (IEC 62056-6-2): the ``Data`` choice, COSEM date-time and OBIS codes.

Standard library only. Decoding is bounded: a length or count larger than the bytes left, a
nesting deeper than :data:`MAX_DEPTH` or an unknown tag raises :class:`AxdrError`, so a hostile
answer costs an error, never a crash or unbounded memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_DEPTH = 8

NULL, ARRAY, STRUCTURE, BOOLEAN, BIT_STRING = 0, 1, 2, 3, 4
INT32, UINT32, OCTET_STRING, VISIBLE_STRING, UTF8_STRING = 5, 6, 9, 10, 12
INT8, INT16, UINT8, UINT16 = 15, 16, 17, 18
INT64, UINT64, ENUM, FLOAT32, FLOAT64, DATE_TIME = 20, 21, 22, 23, 24, 25

_FIXED: dict[int, str] = {
    BOOLEAN: "?",
    INT32: "i",
    UINT32: "I",
    INT8: "b",
    INT16: "h",
    UINT8: "B",
    UINT16: "H",
    INT64: "q",
    UINT64: "Q",
    ENUM: "B",
    FLOAT32: "f",
    FLOAT64: "d",
}


class AxdrError(ValueError):
    """Bytes that are not the A-XDR data they claim to be."""


@dataclass(frozen=True)
class Typed:
    """A value with its A-XDR type (for encoding: Python ints do not say how wide)."""

    tag: int
    value: Any


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AxdrError(f"{n} bytes wanted at {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> int:
        first = self.byte()
        if first < 0x80:
            return first
        size = first & 0x7F
        if not 1 <= size <= 4:
            raise AxdrError(f"length of {size} bytes")
        return int.from_bytes(self.take(size), "big")

    def left(self) -> int:
        return len(self.data) - self.pos


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def decode(reader: Reader, depth: int = 0) -> Any:
    """One ``Data`` value: arrays and structures as lists, octet strings as bytes (a 12-byte
    one stays bytes: use :func:`decode_datetime` where a date-time is expected)."""
    if depth > MAX_DEPTH:
        raise AxdrError("data nested too deep")
    tag = reader.byte()
    if tag == NULL:
        return None
    if tag in (ARRAY, STRUCTURE):
        count = reader.length()
        if count > reader.left():  # every element takes at least one byte
            raise AxdrError(f"{count} elements announced, {reader.left()} bytes left")
        return [decode(reader, depth + 1) for _ in range(count)]
    if tag in _FIXED:
        fmt = ">" + _FIXED[tag]
        return struct.unpack(fmt, reader.take(struct.calcsize(fmt)))[0]
    if tag in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        raw = reader.take(reader.length())
        if tag == OCTET_STRING:
            return raw
        try:
            return raw.decode("utf-8" if tag == UTF8_STRING else "ascii")
        except UnicodeDecodeError as exc:
            raise AxdrError(f"string of tag {tag}: {exc}") from exc
    if tag == BIT_STRING:
        bits = reader.length()
        return reader.take((bits + 7) // 8)
    if tag == DATE_TIME:
        return reader.take(12)
    raise AxdrError(f"unknown data tag {tag}")


def decode_all(data: bytes) -> Any:
    reader = Reader(data)
    value = decode(reader)
    if reader.left():
        raise AxdrError(f"{reader.left()} bytes after the data")
    return value


def encode(value: Any) -> bytes:
    """``Typed`` values, None, bool, bytes (octet string), str (visible string), lists
    (structures; wrap in ``Typed(ARRAY, [...])`` for an array)."""
    if isinstance(value, Typed):
        if value.tag in (ARRAY, STRUCTURE):
            return (
                bytes([value.tag])
                + encode_length(len(value.value))
                + b"".join(encode(v) for v in value.value)
            )
        if value.tag in _FIXED:
            return bytes([value.tag]) + struct.pack(">" + _FIXED[value.tag], value.value)
        raw = bytes(value.value)
        if value.tag == DATE_TIME:
            return bytes([DATE_TIME]) + raw
        if value.tag == OCTET_STRING:
            return bytes([OCTET_STRING]) + encode_length(len(raw)) + raw
        raise AxdrError(f"cannot encode tag {value.tag}")
    if value is None:
        return bytes([NULL])
    if isinstance(value, bool):
        return bytes([BOOLEAN, int(value)])
    if isinstance(value, bytes):
        return bytes([OCTET_STRING]) + encode_length(len(value)) + value
    if isinstance(value, str):
        raw = value.encode("ascii")
        return bytes([VISIBLE_STRING]) + encode_length(len(raw)) + raw
    if isinstance(value, list):
        return encode(Typed(STRUCTURE, value))
    raise AxdrError(f"cannot encode {type(value).__name__}")


# --- COSEM date-time: 12 bytes ---------------------------------------------------------------

DEVIATION_UNSPECIFIED = -0x8000


def encode_datetime(when: datetime, deviation_min: int = 0) -> bytes:
    """``when`` (aware) as a COSEM date-time in local time ``UTC - deviation`` (IEC 62056-6-2:
    deviation is the minutes from local time to UTC, so UTC+1 is -60)."""
    local = when.astimezone(UTC) - timedelta(minutes=deviation_min)
    return struct.pack(
        ">HBBBBBBBhB",
        local.year,
        local.month,
        local.day,
        local.isoweekday(),
        local.hour,
        local.minute,
        local.second,
        0xFF,  # hundredths not specified
        deviation_min,
        0x00,  # clock status: OK
    )


def decode_datetime(raw: bytes) -> tuple[datetime, int]:
    """A COSEM date-time → (UTC datetime, clock status). An unspecified deviation is read as
    UTC; an unspecified date or time field is an error (a profile entry needs a full stamp)."""
    if len(raw) != 12:
        raise AxdrError(f"a date-time is 12 bytes, not {len(raw)}")
    year, month, day, _, hour, minute, second, hundredths, deviation, status = struct.unpack(
        ">HBBBBBBBhB", raw
    )
    if year == 0xFFFF or 0xFF in (month, day, hour, minute, second) or month > 12:
        raise AxdrError(f"date-time not fully specified: {raw.hex()}")
    if deviation != DEVIATION_UNSPECIFIED and not -720 <= deviation <= 840:
        raise AxdrError(f"date-time deviation {deviation} min")
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise AxdrError(f"date-time {raw.hex()}: {exc}") from exc
    if hundredths != 0xFF and hundredths < 100:
        local += timedelta(milliseconds=10 * hundredths)
    shift = 0 if deviation == DEVIATION_UNSPECIFIED else deviation
    return local + timedelta(minutes=shift), status


# --- OBIS -------------------------------------------------------------------------------------


def obis(text: str) -> bytes:
    """``"1.0.1.8.0.255"`` (also ``1-0:1.8.0.255``) → the 6-byte logical name."""
    parts = text.replace("-", ".").replace(":", ".").split(".")
    if len(parts) != 6:
        raise ValueError(f"OBIS code {text!r} has not six groups")
    values = [int(p) for p in parts]
    if any(not 0 <= v <= 255 for v in values):
        raise ValueError(f"OBIS code {text!r} out of range")
    return bytes(values)


def obis_text(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)
