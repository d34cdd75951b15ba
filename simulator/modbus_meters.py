"""Simulated Modbus meters served by pymodbus's own server (TCP, or RTU on a serial port such
as one end of a ``socat`` pty pair): the tests' and the benchmark's real protocol peer.

Each meter draws a steady load, so its energy register grows with the peer's clock (injectable:
the tests and the benchmark run a clock faster than the wall). Registers are encoded with
pymodbus's own converter, in the type, scale and word order of the meter model's register map,
so the agent's decoder is checked against an encoder it does not share. Faults a field day
brings can be switched on per meter: silence (no answer), garbage registers, an exception
answer, a register reset. Needs the ``dev`` extra (pymodbus); not imported by ``simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.meters.register_map import RegisterMap, load_maps
from simulator.serving import peer_clock, serve_until_stopped

Mode = Literal["ok", "silent", "garbage", "exception"]
_TYPES = {t.name.lower(): t for t in ModbusTcpClient.DATATYPE}


@dataclass
class SimulatedMeter:
    unit: int
    regmap: RegisterMap
    kw: float = 1.0  # steady load
    start_kwh: float = 1000.0
    voltage_v: float = 230.0
    mode: Mode = "ok"
    clock: Callable[[], float] = time.time
    _t0: float = field(default=0.0, init=False)
    _base: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._t0 = self.clock()
        self._base = self.start_kwh

    def register_kwh(self) -> float:
        return self._base + self.kw * (self.clock() - self._t0) / 3600.0

    def reset(self, to_kwh: float = 0.0) -> None:
        """The register restarts (a meter replaced, a reset by a technician)."""
        self._t0, self._base = self.clock(), to_kwh

    def values(self) -> dict[str, float]:
        return {
            "register_kwh": self.register_kwh(),
            "voltage_v": self.voltage_v,
            "current_a": self.kw * 1000.0 / self.voltage_v,
            "power_factor": 0.95,
        }

    def write(self, registers: list[int], start_address: int) -> None:
        """Encode every mapped field into the device's registers."""
        for name, value in self.values().items():
            f = self.regmap.fields.get(name)  # type: ignore[call-overload]
            if f is None:
                continue
            raw: float | int = value / f.scale
            if not f.type.startswith("float"):
                raw = int(round(raw)) % (2 ** (16 * f.width))  # integer registers wrap
                if f.type.startswith("int") and raw >= 2 ** (16 * f.width - 1):
                    raw -= 2 ** (16 * f.width)
            words = ModbusTcpClient.convert_to_registers(raw, _TYPES[f.type], f.word_order)
            at = f.address - start_address
            registers[at : at + len(words)] = words


class ModbusPeer:
    """A pymodbus server for ``meters`` (one unit id each) on a thread with its own event loop:
    TCP on ``127.0.0.1:port``, or RTU on ``serial`` (a device path)."""

    def __init__(
        self,
        meters: Sequence[SimulatedMeter],
        *,
        port: int | None = None,
        serial: str | None = None,
        baudrate: int = 9600,
        silence_s: float = 5.0,
    ) -> None:
        if (port is None) == (serial is None):
            raise ValueError("one of port and serial")
        self.meters = {m.unit: m for m in meters}
        self.silence_s = silence_s
        self.requests = 0
        size = max(f.address + f.width for m in meters for f in m.regmap.fields.values()) + 1
        self._devices = [
            SimDevice(
                m.unit,
                simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
                action=self._action_for(m),
            )
            for m in meters
        ]
        self._port, self._serial, self._baudrate = port, serial, baudrate
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="modbus-peer", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _action_for(self, meter: SimulatedMeter):  # type: ignore[no-untyped-def]
        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | None,
        ) -> ExcCodes | None:
            self.requests += 1
            if meter.mode == "silent":
                await asyncio.sleep(self.silence_s)  # longer than any client waits
                return ExcCodes.DEVICE_BUSY
            if meter.mode == "exception":
                return ExcCodes.DEVICE_FAILURE
            meter.write(registers, start_address)
            if meter.mode == "garbage":
                at = address - start_address
                registers[at : at + count] = [(0x7FC0 + 37 * i) & 0xFFFF for i in range(count)]
            return None

        return action

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._started.set()
        finally:  # requests still waiting (a silent meter's) end with the loop
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self) -> None:
        # pymodbus servers belong to the running event loop: made here, on the peer's thread
        if self._port is not None:
            self.server = ModbusTcpServer(self._devices, address=("127.0.0.1", self._port))
        else:
            self.server = ModbusSerialServer(
                self._devices, port=self._serial or "", baudrate=self._baudrate
            )
        await self.server.serve_forever(background=True)
        self._started.set()
        await self.server.serving

    def start(self) -> ModbusPeer:
        # pymodbus logs the frames around a client that gave up waiting: expected here
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"modbus peer did not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop).result(10)
            self._thread.join(10)

    def __enter__(self) -> ModbusPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fleet(
    n: int,
    model: str,
    clock: Callable[[], float] = time.time,
    first_unit: int = 1,
) -> list[SimulatedMeter]:
    """``n`` meters of ``model`` with loads from 0.2 to ~3 kW and distinct register levels."""
    regmap = load_maps()[model]
    return [
        SimulatedMeter(
            first_unit + i,
            regmap,
            kw=0.2 + 0.137 * (i % 21),
            start_kwh=100.0 + 53.7 * i,
            voltage_v=225.0 + (i % 11),
            clock=clock,
        )
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m simulator.modbus_meters",
        description="Serve simulated Modbus meters (pymodbus) until interrupted.",
    )
    p.add_argument("--meters", type=int, default=10, help="meters per bus, unit ids 1..N")
    p.add_argument("--buses", type=int, default=1, help="TCP buses on --port, --port + 1, ...")
    p.add_argument("--model", default="sdm630", help="register map of the meters")
    p.add_argument("--port", type=int, help="first Modbus TCP port on 127.0.0.1")
    p.add_argument("--serial", help="serial device for Modbus RTU (e.g. a socat pty)")
    p.add_argument("--baudrate", type=int, default=9600, help="RTU line speed")
    p.add_argument("--epoch", type=float, help="the meters' clock at --t0 (default: now)")
    p.add_argument("--t0", type=float, help="wall time the clock starts from (default: now)")
    p.add_argument("--speed", type=float, default=1.0, help="meter seconds per real second")
    args = p.parse_args(argv)
    if not 1 <= args.meters <= 247:
        p.error("--meters must be 1..247 (unit ids)")
    if (args.port is None) == (args.serial is None) or (args.serial and args.buses != 1):
        p.error("--port (with --buses), or --serial")
    logging.basicConfig(level=logging.INFO)
    clock = peer_clock(args.epoch, args.t0, args.speed)
    peers = [
        ModbusPeer(
            fleet(args.meters, args.model, clock=clock),
            port=None if args.port is None else args.port + b,
            serial=args.serial,
            baudrate=args.baudrate,
        ).start()
        for b in range(args.buses)
    ]
    print(f"serving {args.buses} x {args.meters} {args.model} meters", flush=True)
    serve_until_stopped()
    for peer in peers:
        peer.stop()


if __name__ == "__main__":
    main()
