"""Register maps: where a meter model keeps each quantity, as data files (``maps/*.toml``).

A map names the read function (input or holding registers) and, for each reading field it
fills (:data:`MAP_FIELDS`), the register address, the value type, a scale to the field's unit
and the word order. The poller reads the fields in as few requests as the map allows
(:meth:`RegisterMap.blocks`: contiguous runs, merged across gaps of at most ``max_gap``
registers, at most ``max_block`` per request). Operators add maps of their own meters in a
directory of their own (``[modbus] maps_dir``); a map there replaces a shipped one of the same
model name.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.meters.modbus import FUNCTIONS, MAX_REGISTERS
from edge_agent.vocabulary import ID_PATTERN

SHIPPED = Path(__file__).with_name("maps")

#: The reading fields a register map may fill; ``register_kwh`` is required (the interval
#: energy is its difference). Each is a field of ``edge_agent.fields.READING_FIELDS``.
MAP_FIELDS: tuple[str, ...] = ("register_kwh", "voltage_v", "current_a", "power_factor")
MapField = Literal["register_kwh", "voltage_v", "current_a", "power_factor"]

ValueType = Literal["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]
_FORMATS: dict[str, str] = {
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "uint64": "Q",
    "int64": "q",
    "float32": "f",
    "float64": "d",
}


class MapError(ValueError):
    """A register map file that cannot be used (named in the message)."""


class RegisterField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=0xFFFF)
    type: ValueType
    scale: float = 1.0
    word_order: Literal["big", "little"] = "big"  # bytes in a register are always big-endian
    # Where an integer energy register wraps to 0 (default: 2^bits x scale). Floats do not wrap.
    rollover_kwh: float | None = Field(default=None, gt=0)

    @property
    def width(self) -> int:
        """Registers the value takes."""
        return struct.calcsize(_FORMATS[self.type]) // 2

    @property
    def rollover(self) -> float | None:
        if self.rollover_kwh is not None or self.type.startswith("float"):
            return self.rollover_kwh
        return float(2 ** (16 * self.width)) * abs(self.scale)

    @model_validator(mode="after")
    def _sane(self) -> RegisterField:
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"scale must be finite and not 0, not {self.scale}")
        if self.address + self.width > 0x10000:
            raise ValueError(f"{self.type} at {self.address} runs past register 65535")
        return self

    def decode(self, registers: Sequence[int]) -> float:
        words = list(registers) if self.word_order == "big" else list(reversed(registers))
        raw = struct.pack(f">{len(words)}H", *words)
        (value,) = struct.unpack(f">{_FORMATS[self.type]}", raw)
        return float(value) * self.scale


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers from ``address``, holding ``fields`` (name and
    offset of the field's first register in the block)."""

    address: int
    count: int
    fields: tuple[tuple[str, int], ...]


class RegisterMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=ID_PATTERN)
    description: str = ""
    function: Literal["input", "holding"]
    max_block: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    # Registers between two fields read anyway to save a request; 0 when the meter refuses
    # reads of addresses it does not define.
    max_gap: int = Field(default=16, ge=0, le=MAX_REGISTERS)
    fields: dict[MapField, RegisterField]

    @model_validator(mode="after")
    def _sane(self) -> RegisterMap:
        if "register_kwh" not in self.fields:
            raise ValueError("a map needs register_kwh (the energy register)")
        spans = sorted((f.address, f.address + f.width, n) for n, f in self.fields.items())
        for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise ValueError(f"{name} and {other} overlap")
        for name, f in self.fields.items():
            if f.width > self.max_block:
                raise ValueError(f"{name} is wider than max_block")
            if f.rollover_kwh is not None and name != "register_kwh":
                raise ValueError(f"rollover_kwh is for register_kwh, not {name}")
        return self

    @property
    def function_code(self) -> int:
        return FUNCTIONS[self.function]

    def blocks(self) -> tuple[Block, ...]:
        """The fewest read requests that cover every field within ``max_block``/``max_gap``."""
        ordered = sorted(self.fields.items(), key=lambda kv: kv[1].address)
        out: list[Block] = []
        start = end = -1
        members: list[tuple[str, int]] = []
        for name, f in ordered:
            if (
                members
                and f.address - end <= self.max_gap
                and f.address + f.width - start <= self.max_block
            ):
                members.append((name, f.address - start))
                end = f.address + f.width
                continue
            if members:
                out.append(Block(start, end - start, tuple(members)))
            start, end, members = f.address, f.address + f.width, [(name, 0)]
        out.append(Block(start, end - start, tuple(members)))
        return tuple(out)

    def decode(self, answers: Sequence[Sequence[int]]) -> dict[str, float]:
        """Field values from the answers to :meth:`blocks`, in that order."""
        values: dict[str, float] = {}
        for block, registers in zip(self.blocks(), answers, strict=True):
            for name, offset in block.fields:
                f = self.fields[name]  # type: ignore[index]
                values[name] = f.decode(registers[offset : offset + f.width])
        return values


def load_map(path: Path) -> RegisterMap:
    try:
        return RegisterMap.model_validate(tomllib.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise MapError(f"register map {path}: {exc}") from exc


def load_maps(extra_dir: Path | None = None) -> dict[str, RegisterMap]:
    """The shipped maps, then those in ``extra_dir`` (replacing shipped ones of the same
    model), by model name."""
    maps: dict[str, RegisterMap] = {}
    for directory in (SHIPPED, extra_dir):
        if directory is None:
            continue
        if not directory.is_dir():
            raise MapError(f"register map directory {directory} does not exist")
        mine: dict[str, Path] = {}
        for path in sorted(directory.glob("*.toml")):
            m = load_map(path)
            if m.model in mine:
                raise MapError(f"model {m.model} mapped twice: {mine[m.model]} and {path}")
            mine[m.model] = path
            maps[m.model] = m
    return maps
