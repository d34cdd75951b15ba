"""The simulated fleet as a source (demo, tests, benchmarks): ``simulator.Fleet`` chunks.

The simulator computes energy to full float precision; real meters report at their resolution,
so the source plays the meters' part and reports energy and registers in watt-hours (0.001 kWh),
voltage and weather to one decimal.

Progress (the next chunk number) is committed with each chunk's readings, so an agent killed at
any point resumes exactly where it stopped: nothing skipped, nothing read twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.buffer import BufferFull
from edge_agent.codec import row_to_wire, ts_to_iso
from edge_agent.fields import KWH, READING_NAMES, TS, Row
from edge_agent.settings import SimSourceSettings
from edge_agent.sources import Intake
from edge_agent.validate import Validator
from edge_agent.vocabulary import MAX_INTERVAL_S, MIN_INTERVAL_S
from edge_agent.wire import WIRE_MAX_KW, QuarantineRecord

if TYPE_CHECKING:
    from simulator import Fleet


def make_fleet(settings: SimSourceSettings) -> Fleet:
    """The simulated fleet the settings describe (deterministic: the same settings, the same
    readings)."""
    from simulator import Fleet, FleetConfig

    return Fleet(
        FleetConfig(
            meters=settings.meters,
            days=int(settings.days) if settings.days.is_integer() else settings.days,
            start=settings.start,
            interval_s=settings.interval_s,
            seed=settings.seed,
            gateways=settings.gateways,
            theft_share=settings.theft_share,
        )
    )


class SimSource:
    name = "sim"

    def __init__(
        self, settings: SimSourceSettings, intake: Intake, fleet: Fleet | None = None
    ) -> None:
        """``fleet``: the fleet of ``settings`` when the caller made it already (the agent reads
        its registry before it builds the intake)."""
        from simulator import FLAG_NAMES  # numpy-only package

        self.settings = settings
        self.intake = intake
        self.flag_names = FLAG_NAMES
        self.fleet = fleet if fleet is not None else make_fleet(settings)
        self.key = f"sim:{settings.seed}:{settings.gateways}:{settings.gateway_index}:next_chunk"
        stored = intake.progress(self.key)
        self.next_chunk = int(stored) if stored is not None else 0
        self._chunks = self.fleet.chunks(
            gateway=settings.gateway_index, chunk_intervals=settings.chunk_intervals
        )
        for _ in range(self.next_chunk):  # resume: regenerate deterministically and skip
            next(self._chunks, None)
        self._held: Any = None
        self._done = False
        self._started: float | None = None
        self.emitted_chunks = 0

    def close(self) -> None:
        pass

    def exhausted(self) -> bool:
        return self._done

    def _allowed(self, now: float) -> bool:
        rate = self.settings.intervals_per_s
        if rate <= 0:
            return True
        if self._started is None:
            self._started = now
        budget = (now - self._started) * rate / self.settings.chunk_intervals
        return self.emitted_chunks < budget + 1

    def poll(self, now: float) -> int:
        if self._done or not self._allowed(now):
            return 0
        chunk = self._held if self._held is not None else next(self._chunks, None)
        self._held = None
        if chunk is None:
            self._done = True
            return 0
        results = self.rows(chunk)
        try:
            self.intake.take(results, meta={self.key: self.next_chunk + 1})
        except BufferFull:
            self._held = chunk
            return 0
        self.next_chunk += 1
        self.emitted_chunks += 1
        return len(results)

    def rows(self, chunk: Any) -> list[Row | QuarantineRecord]:
        rows = columns_to_rows(chunk, self.intake.validator, self.flag_names)
        if self.settings.garbled_share > 0:
            # the same chunk garbled the same way, however often it is read (a resumed agent)
            s = self.settings
            rng = np.random.default_rng([s.seed, s.gateway_index, self.next_chunk])
            garble(rows, s.garbled_share, rng, self.intake.validator)
        return rows


# What failing meters send: a 16-bit energy register read as all ones, a negative energy (a
# sign bit flipped), a clock a year ahead (a reset RTC).
GARBLINGS = ("register_all_ones", "negative_energy", "clock_ahead")


def _garbled(row: Row, way: str) -> dict[str, Any]:
    out = row_to_wire(row)
    if way == "register_all_ones":
        out["kwh"] = 65535.0
    elif way == "negative_energy":
        out["kwh"] = -1.0 - row[KWH]
    else:
        out["ts"] = ts_to_iso(row[TS] + 365 * 86400)
    return out


def garble(
    rows: list[Row | QuarantineRecord], share: float, rng: np.random.Generator, v: Validator
) -> None:
    """Garble about ``share`` of the readings in ``rows`` (in place), each one way of
    :data:`GARBLINGS`, and put them through the validator as a source's input: each becomes the
    quarantine record the agent would make of a real meter's."""
    picked = np.flatnonzero(rng.random(len(rows)) < share)
    ways = rng.integers(0, len(GARBLINGS), len(picked))
    for i, way in zip(picked.tolist(), ways.tolist(), strict=True):
        row = rows[i]
        if isinstance(row, QuarantineRecord):
            continue
        wire_dict = _garbled(row, GARBLINGS[way])
        rows[i] = v.check(wire_dict, str(wire_dict), "sim")


def columns_to_rows(
    chunk: Any, v: Validator, flag_names: Sequence[str]
) -> list[Row | QuarantineRecord]:
    """Columns → rows, validated column-wise; rows failing a check take the validator's slow
    path, which quarantines them with the exact reason."""
    n = len(chunk)
    interval = int(chunk.interval_s)
    kwh = np.round(np.asarray(chunk.kwh, dtype=np.float64), 3)
    ts = np.asarray(chunk.ts, dtype=np.int64)
    volt = np.round(np.asarray(chunk.voltage_v, dtype=np.float64), 1)
    reg = np.round(np.asarray(chunk.register_kwh, dtype=np.float64), 3)
    ceiling = min(v.max_kw, WIRE_MAX_KW) * interval / 3600.0
    ok = np.isfinite(kwh) & (kwh >= 0) & (kwh <= ceiling) & (ts <= v.latest_ts())
    ok &= np.isnan(volt) | ((volt >= 0) & (volt <= 300))
    ok &= np.isnan(reg) | (reg >= 0)
    ok &= (interval >= MIN_INTERVAL_S) & (interval <= MAX_INTERVAL_S)
    flags = np.asarray(chunk.flags)
    flag_text = {int(b): _flag_text(int(b), flag_names) for b in np.unique(flags)}
    by_name: dict[str, list[Any]] = {
        "meter_id": np.asarray(chunk.meter_id).tolist(),
        "ts": ts.tolist(),
        "interval_s": [interval] * n,
        "kwh": kwh.tolist(),
        "register_kwh": _opt(reg),
        "voltage_v": _opt(volt),
        "temperature_c": _opt(np.round(np.asarray(chunk.temperature_c, dtype=np.float64), 1)),
        "humidity_pct": _opt(np.round(np.asarray(chunk.humidity_pct, dtype=np.float64), 1)),
        "wind_ms": _opt(np.round(np.asarray(chunk.wind_ms, dtype=np.float64), 1)),
        "supply": np.asarray(chunk.supply_on).astype(np.int64).tolist(),
        "flags": [flag_text[b] for b in flags.tolist()],
    }
    unknown = set(by_name) - set(READING_NAMES)
    if unknown:
        raise KeyError(f"not reading fields: {sorted(unknown)}")
    missing = [None] * n  # fields the simulated meters do not report
    cols = [by_name.get(name, missing) for name in READING_NAMES]
    rows: list[Row | QuarantineRecord] = list(zip(*cols, strict=True))
    for i in np.flatnonzero(~ok).tolist():
        wire_dict = row_to_wire(rows[i])  # type: ignore[arg-type]
        rows[i] = v.check(wire_dict, str(wire_dict), "sim")
    return rows


def _flag_text(bits: int, flag_names: Sequence[str]) -> str | None:
    names = [name for i, name in enumerate(flag_names) if bits >> i & 1]
    return ",".join(names) if names else None


def _opt(values: np.ndarray) -> list[float | None]:
    """NaN → None (a value the meter did not report)."""
    out: list[float | None] = values.tolist()
    if np.isnan(values).any():
        for i in np.flatnonzero(np.isnan(values)).tolist():
            out[i] = None
    return out
