"""The Modbus source: registers polled on the clock's boundaries become interval readings in the
gateway's buffer, exactly once, through silences, restarts and registers that misbehave. The
meters are pymodbus servers; the clock is the test's (the peer's meters and the agent share it)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import cli
from edge_agent.buffer import Buffer
from edge_agent.meters.register_energy import MeterState, take_read
from edge_agent.settings import ModbusSettings
from edge_agent.sources import Intake
from edge_agent.sources.modbus import KEY_PREFIX, ModbusSource
from edge_agent.validate import Validator
from simulator.modbus_meters import ModbusPeer, SimulatedMeter, fleet

INTERVAL = 900
POLL_WINDOW = 60
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z, a boundary


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def query(db: Path, sql: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    """Two Modbus TCP buses of simulated meters, a buffer, and a source reading them."""

    def __init__(self, tmp: Path, clock: Clock, *, unreachable_after: int = 3) -> None:
        self.clock = clock
        self.ports = [free_port(), free_port()]
        self.meters = [fleet(3, "sdm630", clock=clock), fleet(2, "generic-u32-wh", clock=clock)]
        self.peers = [
            ModbusPeer(m, port=p, silence_s=1.0).start()
            for m, p in zip(self.meters, self.ports, strict=True)
        ]
        self.settings = ModbusSettings.model_validate(
            {
                "interval_s": INTERVAL,
                "unreachable_after": unreachable_after,
                "buses": [
                    {
                        "name": f"bus{b}",
                        "kind": "tcp",
                        "host": "127.0.0.1",
                        "port": port,
                        "timeout_s": 0.3,
                        "retries": 0,
                        "meters": [
                            {
                                "meter_id": self.meter_id(b, m),
                                "unit": m.unit,
                                "model": m.regmap.model,
                            }
                            for m in self.meters[b]
                        ],
                    }
                    for b, port in enumerate(self.ports)
                ],
            }
        )
        self.clock_trusted = True
        self.db_path = tmp / "buffer.db"
        self.buffer = Buffer(self.db_path)
        self.source = self.open_source()

    @staticmethod
    def meter_id(bus: int, m: SimulatedMeter) -> str:
        return f"b{bus}-u{m.unit}"

    def all_meters(self) -> Iterator[tuple[str, SimulatedMeter]]:
        for b, meters in enumerate(self.meters):
            for m in meters:
                yield self.meter_id(b, m), m

    def open_source(self) -> ModbusSource:
        intake = Intake(self.buffer.readings, self.buffer.meta, Validator(self.clock))
        return ModbusSource(
            self.settings,
            intake,
            self.buffer.alerts,
            "gw-site",
            max_kw=50.0,
            trusted=lambda: self.clock_trusted,
        )

    def boundary(self, k: int, expect: int = 5) -> None:
        """Move the clock to boundary ``k`` and take every meter's read of it."""
        self.clock.t = T0 + k * INTERVAL + 1
        taken = 0
        deadline = time.monotonic() + 20
        while taken < expect:
            assert time.monotonic() < deadline, f"{taken} of {expect} reads at boundary {k}"
            taken += self.source.poll(self.clock.t)
            time.sleep(0.005)

    def readings(self, meter_id: str) -> list[tuple[int, int, float, float, str | None]]:
        return query(
            self.db_path,
            "select ts, interval_s, kwh, register_kwh, flags from readings "
            "where meter_id = ? order by ts",
            meter_id,
        )

    def quarantined(self) -> list[tuple[str, str]]:
        return query(self.db_path, "select reason, raw from quarantine order by rowid")

    def alerts(self) -> list[tuple[str, str, int]]:
        return query(self.db_path, "select kind, meter_id, ts from alerts order by ts")

    def close(self) -> None:
        self.source.close()
        for p in self.peers:
            p.stop()
        self.buffer.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, Clock(T0 - 100))
    try:
        yield s
    finally:
        s.close()


def _energy(m: SimulatedMeter, seconds: int) -> float:
    return m.kw * seconds / 3600.0


def test_polled_registers_become_interval_readings_once_across_a_restart(site: Site) -> None:
    for k in range(5):
        site.boundary(k)
    site.source.close()
    site.source = site.open_source()  # the agent restarts: the committed registers carry on
    site.boundary(4)  # the same boundary read again: nothing new
    assert len(site.readings("b0-u1")) == 4
    site.clock.t += 2 * POLL_WINDOW  # too late for boundary 4: not read again
    assert site.source.poll(site.clock.t) == 0
    time.sleep(0.2)
    assert site.source.poll(site.clock.t) == 0
    site.boundary(5)
    for meter_id, m in site.all_meters():
        rows = site.readings(meter_id)
        # the first read is the baseline; then one reading per boundary, aligned, one interval
        assert [r[0] for r in rows] == [T0 + k * INTERVAL for k in range(1, 6)], meter_id
        assert all(r[1] == INTERVAL for r in rows)
        for ts, _, kwh, register, flags in rows:
            assert kwh == pytest.approx(_energy(m, INTERVAL), abs=2e-3), meter_id
            assert register == pytest.approx(m.start_kwh + _energy(m, ts - (T0 - 100)), abs=0.01)
            assert flags is None
    counters = site.buffer.counters.all()
    assert counters["modbus_polls_ok"] == 5 * 7 and "modbus_polls_failed" not in counters
    assert site.quarantined() == []


def test_a_silent_meter_raises_one_alert_and_its_next_reading_spans_the_silence(
    site: Site,
) -> None:
    quiet_id, quiet = next(iter(site.all_meters()))
    site.boundary(0)
    site.boundary(1)
    quiet.mode = "silent"
    for k in range(2, 7):  # five boundaries unanswered
        site.boundary(k)
    assert site.alerts() == [("meter_unreachable", quiet_id, T0 + 2 * INTERVAL)]
    state = MeterState.from_json(site.buffer.meta.get(KEY_PREFIX + quiet_id))
    assert state.missed_since == T0 + 2 * INTERVAL and state.errors == 5
    assert "ModbusTimeout" in (state.last_error or "")
    quiet.mode = "ok"
    site.boundary(7)
    rows = site.readings(quiet_id)
    assert [r[0] for r in rows] == [T0 + INTERVAL, T0 + 7 * INTERVAL]
    ts, span, kwh, _, _ = rows[-1]
    assert span == 6 * INTERVAL and kwh == pytest.approx(_energy(quiet, span), abs=2e-3)
    # the operator sees each meter's failed reads and last error (edge-agent status)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["status", "--db", str(site.db_path), "--json"]) == 0
    meters = json.loads(out.getvalue())["polled_meters"]
    assert meters[quiet_id]["errors"] == 5 and meters[quiet_id]["silent_since"] is None
    assert "ModbusTimeout" in meters[quiet_id]["last_error"]
    assert {m["source"] for m in meters.values()} == {"modbus"} and len(meters) == 5
    # the others went on, and a later silence is a new alert
    assert all(len(site.readings(m)) == 7 for m, _ in site.all_meters() if m != quiet_id)
    quiet.mode = "silent"
    for k in range(8, 11):
        site.boundary(k)
    assert [a[2] for a in site.alerts()] == [T0 + 2 * INTERVAL, T0 + 8 * INTERVAL]


def test_nothing_is_read_while_the_clock_is_suspect(site: Site) -> None:
    site.boundary(0)
    site.boundary(1)
    site.clock_trusted = False
    for k in (2, 3):
        site.clock.t = T0 + k * INTERVAL + 1
        assert site.source.poll(site.clock.t) == 0
        time.sleep(0.3)
        assert site.source.poll(site.clock.t) == 0  # nothing was sent to the meters
    site.clock_trusted = True
    site.boundary(4)
    for meter_id, m in site.all_meters():
        ts, span, kwh, _, _ = site.readings(meter_id)[-1]
        assert (ts, span) == (T0 + 4 * INTERVAL, 3 * INTERVAL)
        assert kwh == pytest.approx(_energy(m, span), abs=2e-3)


def test_polling_resumes_at_once_when_a_clock_a_day_ahead_is_set_back(site: Site) -> None:
    site.boundary(0)
    site.boundary(1)
    site.clock_trusted = False  # NTP stepped the clock a day ahead: suspect, nothing read
    site.clock.t = T0 + 97 * INTERVAL + 1
    assert site.source.poll(site.clock.t) == 0
    site.clock_trusted = True  # ... and back: the next boundary is read, not a day later
    site.boundary(3)
    for meter_id, m in site.all_meters():
        ts, span, kwh, _, _ = site.readings(meter_id)[-1]
        assert (ts, span) == (T0 + 3 * INTERVAL, 2 * INTERVAL)
        assert kwh == pytest.approx(_energy(m, span), abs=2e-3)


def test_a_garbled_voltage_does_not_take_the_energy_with_it(site: Site) -> None:
    (meter_id, m), *_ = list(site.all_meters())
    site.boundary(0)
    m.voltage_v = 520.0  # out of range (a wrong scale, a 400 V line read as L-N)
    site.boundary(1)
    ts, span, kwh, _, _ = site.readings(meter_id)[-1]
    assert (ts, span) == (T0 + INTERVAL, INTERVAL)
    assert kwh == pytest.approx(_energy(m, INTERVAL), abs=2e-3)
    (reason, raw), *_ = site.quarantined()
    assert reason.startswith("fields_dropped: invalid: voltage_v") and '"voltage_v": 520' in raw
    voltage = query(site.db_path, "select voltage_v from readings where meter_id = ?", meter_id)
    assert voltage[-1] == (None,)


def test_garbage_and_resets_are_quarantined_or_flagged_never_negative(site: Site) -> None:
    (gid, garbled), (rid, reset) = list(site.all_meters())[:2]
    site.boundary(0)
    site.boundary(1)
    garbled.mode = "garbage"
    site.boundary(2)
    reasons = [r for r, _ in site.quarantined()]
    assert len(reasons) == 1 and reasons[0].startswith(("register_jump", "register_invalid"))
    garbled.mode = "ok"
    reset.reset(to_kwh=0.0)
    site.boundary(3)
    rows = site.readings(gid)
    # the garbled read left the baseline alone: the next reading spans both intervals
    assert rows[-1][0] == T0 + 3 * INTERVAL and rows[-1][1] == 2 * INTERVAL
    assert rows[-1][2] == pytest.approx(_energy(garbled, 2 * INTERVAL), abs=2e-3)
    ts, span, kwh, register, flags = site.readings(rid)[-1]
    assert flags == "register_reset" and kwh == register and kwh >= 0
    site.boundary(4)
    assert site.readings(rid)[-1][4] is None
    assert query(site.db_path, "select min(kwh) from readings")[0][0] >= 0


def test_a_dead_bus_does_not_stop_the_others(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    port = free_port()
    meters = fleet(2, "sdm120", clock=clock)
    settings = ModbusSettings.model_validate(
        {
            "interval_s": INTERVAL,
            "buses": [
                {
                    "name": "gone",
                    "kind": "rtu",
                    "device": str(tmp_path / "ttyUSB7"),
                    "meters": [{"meter_id": "r1", "unit": 1, "model": "sdm120"}],
                },
                {
                    "name": "refused",
                    "kind": "tcp",
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "meters": [{"meter_id": "t1", "unit": 1, "model": "sdm120"}],
                },
                {
                    "name": "up",
                    "kind": "tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "meters": [
                        {"meter_id": f"u{m.unit}", "unit": m.unit, "model": "sdm120"}
                        for m in meters
                    ],
                },
            ],
        }
    )
    buffer = Buffer(tmp_path / "b.db")
    source = ModbusSource(
        settings,
        Intake(buffer.readings, buffer.meta, Validator(clock)),
        buffer.alerts,
        "gw",
        max_kw=50.0,
    )
    try:
        with ModbusPeer(meters, port=port):
            for k in range(4):
                clock.t = T0 + k * INTERVAL + 1
                taken, deadline = 0, time.monotonic() + 20
                while taken < 4 and time.monotonic() < deadline:
                    taken += source.poll(clock.t)
                    time.sleep(0.005)
                assert taken == 4
        db = tmp_path / "b.db"
        assert query(db, "select count(*) from readings") == [(2 * 3,)]
        assert query(db, "select kind, meter_id from alerts order by meter_id") == [
            ("meter_unreachable", "r1"),
            ("meter_unreachable", "t1"),
        ]
    finally:
        source.close()
        buffer.close()


@pytest.mark.parametrize(
    ("baseline", "values", "rollover", "expect"),
    [
        # an integer register wraps: the energy across the wrap, flagged
        (4294967.0, 0.5, 4294967.296, ("reading", 0.796, ["register_rollover"])),
        # back without a wrap that fits: a reset, the energy since zero
        (500.0, 0.3, None, ("reading", 0.3, ["register_reset"])),
        (500.0, 0.3, 4294967.296, ("reading", 0.3, ["register_reset"])),
        (500.0, math.nan, None, ("quarantine", "register_invalid", None)),
        (500.0, -1.0, None, ("quarantine", "register_invalid", None)),
        (500.0, math.inf, None, ("quarantine", "register_invalid", None)),
        (500.0, 9e9, None, ("quarantine", "register_jump", None)),
    ],
)
def test_take_read_cases(
    baseline: float, values: float, rollover: float | None, expect: tuple[str, object, object]
) -> None:
    state = MeterState(ts=T0, register=baseline)
    out = take_read(
        "m", state, T0 + INTERVAL, {"register_kwh": values}, max_kw=10, rollover=rollover
    )
    kind, what, flags = expect
    if kind == "reading":
        assert out.reading is not None and out.quarantine is None
        assert out.reading["kwh"] == pytest.approx(what, abs=1e-3)
        assert out.reading["flags"] == flags and out.reading["kwh"] >= 0
        assert out.state.register == values
    else:
        assert out.reading is None and out.quarantine is not None
        assert out.quarantine.startswith(str(what)) and json.loads(out.raw)["meter_id"] == "m"
        assert out.state.register == baseline  # the baseline stays


def test_a_jump_that_stays_becomes_the_new_baseline_and_a_long_gap_is_quarantined() -> None:
    state = MeterState(ts=T0, register=100.0)
    first = take_read("m", state, T0 + INTERVAL, {"register_kwh": 5000.0}, max_kw=10)
    assert first.quarantine and first.state.suspect == 5000.0
    second = take_read("m", first.state, T0 + 2 * INTERVAL, {"register_kwh": 5001.0}, max_kw=10)
    assert second.reading is not None and second.reading["flags"] == ["register_jump"]
    assert second.reading["kwh"] == pytest.approx(1.0) and second.reading["interval_s"] == INTERVAL
    transient = take_read("m", first.state, T0 + 2 * INTERVAL, {"register_kwh": 101.0}, max_kw=10)
    assert transient.reading is not None and transient.reading["kwh"] == pytest.approx(1.0)
    assert transient.reading["interval_s"] == 2 * INTERVAL and "flags" not in transient.reading
    later = take_read("m", state, T0 + 2 * 86400, {"register_kwh": 130.0}, max_kw=10)
    assert later.reading is None and (later.quarantine or "").startswith("gap_too_long")
    assert later.state.register == 130.0 and later.state.ts == T0 + 2 * 86400
    behind = take_read("m", state, T0 - INTERVAL, {"register_kwh": 99.0}, max_kw=10)
    assert behind.reading is None and behind.quarantine is None and behind.state.register == 100.0
    # a baseline a year ahead (a clock since corrected) does not stop the meter for a year
    ahead = MeterState(ts=T0 + 365 * 86400, register=100.0)
    back = take_read("m", ahead, T0, {"register_kwh": 120.0}, max_kw=10)
    assert (back.quarantine or "").startswith("clock_back") and back.state.ts == T0
    after = take_read("m", back.state, T0 + INTERVAL, {"register_kwh": 121.0}, max_kw=10)
    assert after.reading is not None and after.reading["kwh"] == pytest.approx(1.0)
