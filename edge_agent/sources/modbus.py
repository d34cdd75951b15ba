"""Meters read over Modbus TCP or RTU, on the reading interval, aligned to the clock.

At each boundary (a multiple of ``interval_s`` in UTC) every bus is polled by a worker thread
(at most ``workers`` buses at once); on one bus, meters are read one after another, never two
requests at a time. A meter's fields are read in the blocks its register map plans, each
request retried ``retries`` times within its timeout. The main loop takes the answers
(:meth:`ModbusSource.poll`), turns registers into interval readings
(``edge_agent.meters.register_energy``) and commits them with each meter's new state in one
buffer transaction: an agent killed at any point resumes from the last committed register, so
no energy is counted twice or lost.

A meter that misses ``unreachable_after`` boundaries in a row raises one ``meter_unreachable``
alert (its id: the meter and the first boundary missed); when it answers again its next reading
spans the silence. A bus that fails (a port that vanished, a host down) affects only its own
meters. Polls still running at the next boundary (a slow bus) skip that boundary, counted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from edge_agent.buffer import AlertStore
from edge_agent.meters.modbus import (
    ModbusError,
    RtuTransport,
    TcpTransport,
    Transport,
    read_registers,
)
from edge_agent.meters.register_map import MapError, RegisterMap, load_maps
from edge_agent.settings import ModbusBusSettings, ModbusSettings
from edge_agent.sources import Intake
from edge_agent.sources.polled import PREFIXES, CycleTimer, MeterBook, drain

log = logging.getLogger(__name__)

KEY_PREFIX = PREFIXES["modbus"]


def transport_for(bus: ModbusBusSettings) -> Transport:
    if bus.kind == "tcp":
        assert bus.host is not None
        return TcpTransport(bus.host, bus.port, bus.timeout_s)
    assert bus.device is not None
    return RtuTransport(bus.device, bus.baudrate, bus.parity, bus.stopbits, bus.timeout_s)


@dataclass(frozen=True)
class MeterPoll:
    """One meter read at one boundary: its field values, or why there are none."""

    meter_id: str
    boundary: int
    values: dict[str, float] | None
    error: str | None = None


def read_meter(
    transport: Transport, unit: int, regmap: RegisterMap, retries: int
) -> dict[str, float]:
    """Every field of ``regmap``, each block tried ``1 + retries`` times."""
    answers: list[Sequence[int]] = []
    for block in regmap.blocks():
        for attempt in range(retries + 1):
            try:
                answers.append(
                    read_registers(
                        transport, unit, regmap.function_code, block.address, block.count
                    )
                )
                break
            except ModbusError:
                if attempt == retries:
                    raise
    return regmap.decode(answers)


class Bus:
    """One bus and its meters; :meth:`poll` runs on a worker thread, one at a time."""

    def __init__(
        self, settings: ModbusBusSettings, maps: dict[str, RegisterMap], transport: Transport
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.meters = [(m.meter_id, m.unit, maps[m.model]) for m in settings.meters]
        self.running: Future[None] | None = None

    def poll(self, boundary: int, out: Callable[[MeterPoll], None], stop: threading.Event) -> None:
        for meter_id, unit, regmap in self.meters:
            if stop.is_set():
                return
            try:
                values = read_meter(self.transport, unit, regmap, self.settings.retries)
            except Exception as exc:  # noqa: BLE001 - one meter failing never stops the bus
                if not isinstance(exc, ModbusError | OSError):
                    log.exception("modbus: reading meter %s failed", meter_id)
                out(MeterPoll(meter_id, boundary, None, f"{type(exc).__name__}: {exc}"))
            else:
                out(MeterPoll(meter_id, boundary, values))


class ModbusSource:
    name = "modbus"

    def __init__(
        self,
        settings: ModbusSettings,
        intake: Intake,
        alerts: AlertStore,
        gateway_id: str,
        *,
        max_kw: float,
        trusted: Callable[[], bool] = lambda: True,
        transports: Callable[[ModbusBusSettings], Transport] = transport_for,
    ) -> None:
        """``trusted``: whether the gateway's wall clock can stamp readings now
        (``ClockWatch.trusted``); while not, no boundary is read."""
        maps = load_maps(settings.maps_dir)
        for bus in settings.buses:
            for m in bus.meters:
                if m.model not in maps:
                    raise MapError(
                        f"meter {m.meter_id}: no register map for model {m.model!r} "
                        f"(known: {', '.join(sorted(maps))})"
                    )
        self.settings = settings
        self.trusted = trusted
        self.rollover = {
            m.meter_id: maps[m.model].fields["register_kwh"].rollover
            for bus in settings.buses
            for m in bus.meters
        }
        self.book = MeterBook(
            KEY_PREFIX,
            list(self.rollover),
            intake,
            alerts,
            gateway_id,
            interval_s=settings.interval_s,
            unreachable_after=settings.unreachable_after,
            max_kw=max_kw,
            source="modbus",
        )
        self.buses = [Bus(b, maps, transports(b)) for b in settings.buses]
        self._results: queue.SimpleQueue[MeterPoll] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(
            max_workers=min(settings.workers, len(self.buses)), thread_name_prefix="modbus"
        )
        self._last_boundary: int | None = None
        self.cycle = CycleTimer("modbus")
        self.overruns = 0
        # The clock that decides the boundaries; None: the agent's (``poll(now)``). A seam for
        # the benchmark and tests, which replay polling on a faster clock.
        self.clock: Callable[[], float] | None = None
        log.info(
            "modbus: %d meters on %d buses, every %d s",
            len(self.rollover),
            len(self.buses),
            settings.interval_s,
        )

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for bus in self.buses:
            bus.transport.close()

    def poll(self, now: float) -> int:
        if self.clock is not None:
            now = self.clock()
        self._dispatch(int(now))
        polls = drain(self._results)
        if not polls:
            return 0
        self.cycle.answered([p.boundary for p in polls])
        self._take(polls, now)
        return len(polls)

    def _dispatch(self, now: int) -> None:
        interval = self.settings.interval_s
        boundary = now - now % interval
        if boundary == self._last_boundary:
            return  # a clock stepped back reads its boundaries again (nothing is taken twice)
        self._last_boundary = boundary
        if now - boundary > self.settings.poll_window_s:
            return  # too late to read this one: the next reading spans it
        if not self.trusted():
            log.warning("modbus: boundary %d not read: the wall clock is suspect", boundary)
            return
        reads = 0
        for bus in self.buses:
            if bus.running is not None and not bus.running.done():
                self.overruns += 1
                log.warning(
                    "modbus bus %s still polling at %d: this boundary is skipped on it",
                    bus.settings.name,
                    boundary,
                )
                continue
            bus.running = self._pool.submit(bus.poll, boundary, self._results.put, self._stop)
            reads += len(bus.meters)
        self.cycle.start(boundary, reads)

    def _take(self, polls: list[MeterPoll], now: float) -> None:
        book = self.book
        for p in polls:
            if p.values is None:
                book.count("modbus_polls_failed")
                book.failed(p.meter_id, p.boundary, p.error or "no answer")
            else:
                book.count("modbus_polls_ok")
                book.answered(p.meter_id, p.boundary, p.values, now, self.rollover[p.meter_id])
        book.count("modbus_overruns", self.overruns)
        if book.commit(now):
            self.overruns = 0
