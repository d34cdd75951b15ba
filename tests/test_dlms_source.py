"""The DLMS source on a real buffer: load profiles read on the interval, caught up from the
meter's memory after an outage, stamped with capture times, exactly once across restarts; meters
with clocks far off, silent meters and wrong passwords. The meters are the project's test meter
(checked against gurux-dlms in tests/test_dlms.py); the clock is the test's."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.buffer import Buffer
from edge_agent.settings import DlmsSettings
from edge_agent.sources import Intake
from edge_agent.sources.dlms import DlmsSource
from edge_agent.validate import Validator
from simulator.dlms_meter import DlmsMeter, DlmsPeer

INTERVAL = 900
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def query(db: Path, sql: str, *args: object) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


class Site:
    def __init__(
        self,
        tmp: Path,
        clock: Clock,
        n: int = 3,
        password: bytes | None = None,
        history_days: float = 5,
        catch_up_days: float = 1,
    ) -> None:
        self.catch_up_days = catch_up_days
        self.clock = clock
        self.meters = [
            DlmsMeter(kw=1.0 + i, start_kwh=500.0 * (i + 1), memory_days=3, clock=clock,
                      password=password, history_s=history_days * 86400)
            for i in range(n)
        ]  # fmt: skip
        self.peer = DlmsPeer(self.meters, [0] * n).start()
        self.password = password
        self.db = tmp / "buffer.db"
        self.buffer = Buffer(self.db)
        self.source = self.open()

    def settings(self, password: bytes | None) -> DlmsSettings:
        return DlmsSettings.model_validate(
            {
                "interval_s": INTERVAL,
                "catch_up_days": self.catch_up_days,
                "unreachable_after": 3,
                "meters": [
                    {
                        "meter_id": f"d{i}",
                        "host": "127.0.0.1",
                        "port": port,
                        "timeout_s": 0.5,
                        **({"password": password.decode()} if password else {}),
                    }
                    for i, port in enumerate(self.peer.ports)
                ],
            }
        )

    def open(self, password: bytes | None = None) -> DlmsSource:
        source = DlmsSource(
            self.settings(password or self.password),
            Intake(self.buffer.readings, self.buffer.meta, Validator(self.clock)),
            self.buffer.alerts,
            "gw-dlms",
            max_kw=50.0,
        )
        source.clock = self.clock
        return source

    def read_at(self, t: float, expect: int | None = None) -> None:
        """Move the clock to ``t`` and take every meter's read of that boundary."""
        self.clock.t = t
        expect = len(self.meters) if expect is None else expect
        taken, deadline = 0, time.monotonic() + 20
        while taken < expect:
            assert time.monotonic() < deadline, f"{taken} of {expect} reads"
            taken += self.source.poll(t)
            time.sleep(0.005)

    def readings(self, meter_id: str) -> list[tuple[int, int, float, float]]:
        return query(
            self.db,
            "select ts, interval_s, kwh, register_kwh from readings where meter_id = ? order by ts",
            meter_id,
        )

    def close(self) -> None:
        self.source.close()
        self.peer.stop()
        self.buffer.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, Clock(T0))  # the meters have run five days, three in memory
    try:
        yield s
    finally:
        s.close()


def test_profiles_are_caught_up_stamped_by_capture_time_and_taken_once(site: Site) -> None:
    site.read_at(T0 + 40)  # first read: a day back (catch_up_days), the first entry a baseline
    first = T0 - 86400 + 2 * INTERVAL
    for i, m in enumerate(site.meters):
        rows = site.readings(f"d{i}")
        assert [r[0] for r in rows] == list(range(first, T0 + 1, INTERVAL))
        for ts, span, kwh, register in rows:
            assert span == INTERVAL and kwh == pytest.approx(m.kw / 4, abs=1e-3)
            assert register == pytest.approx(m.register_wh(ts) / 1000, abs=1e-3)
    site.read_at(T0 + INTERVAL + 40)
    assert len(site.readings("d0")) == 96
    # the gateway is off for a day and a half: back, it reads that time from each meter
    site.source.close()
    site.source = site.open()
    site.read_at(T0 + INTERVAL + 40)  # the same boundary after a restart: nothing new
    assert len(site.readings("d0")) == 96
    back = T0 + INTERVAL + 36 * 3600
    started = time.monotonic()
    site.read_at(back + 40)
    caught_up_s = time.monotonic() - started
    for i, m in enumerate(site.meters):
        rows = site.readings(f"d{i}")
        assert [r[0] for r in rows] == list(range(first, back + 1, INTERVAL))
        assert all(r[1] == INTERVAL for r in rows)  # entries, not one reading spanning the gap
        assert sum(r[2] for r in rows) == pytest.approx(
            (m.register_wh(back) - m.register_wh(first - INTERVAL)) / 1000, abs=1e-3
        )
    print(f"caught up 36 h of 15-minute entries of 3 meters in {caught_up_s:.2f} s")
    assert query(site.db, "select count(*) from quarantine") == [(0,)]


def test_a_long_outage_is_caught_up_two_days_per_read(site: Site) -> None:
    site.read_at(T0 + 40)
    back = T0 + int(2.75 * 86400)  # within the meters' three days of memory
    site.read_at(back + 40)
    rows = site.readings("d0")
    assert rows[-1][0] == T0 + 2 * 86400  # two days, not all at once
    site.read_at(back + INTERVAL + 40)
    rows = site.readings("d0")
    assert [r[0] for r in rows] == list(range(rows[0][0], back + INTERVAL + 1, INTERVAL))


def test_a_meter_clock_far_off_is_quarantined_not_stamped(site: Site) -> None:
    site.read_at(T0 + 40)
    wrong = site.meters[1]
    wrong.clock_offset_s = 3 * 3600  # three hours ahead
    site.read_at(T0 + INTERVAL + 40)
    reasons = query(site.db, "select reason from quarantine")
    assert reasons and all(r[0].startswith("meter_clock_off: the meter's clock is +10800 s")
                           for r in reasons)  # fmt: skip
    assert len(site.readings("d1")) == 95  # nothing new from it
    assert len(site.readings("d0")) == 96
    first = len(reasons)
    site.read_at(T0 + 2 * INTERVAL + 40)  # still ahead: only its new entry, none again
    assert len(query(site.db, "select reason from quarantine")) == first + 1
    wrong.clock_offset_s = 0  # set right: readings again, no jump from the quarantined entries
    site.read_at(T0 + 3 * INTERVAL + 40)
    rows = site.readings("d1")
    assert rows[-1][0] == T0 + 3 * INTERVAL
    assert all(r[2] == pytest.approx(wrong.kw / 4, abs=1e-3) for r in rows[-2:])


def test_a_silent_meter_raises_one_alert_and_is_caught_up_from_its_memory(site: Site) -> None:
    site.read_at(T0 + 40)
    quiet = site.meters[2]
    quiet.mode = "silent"
    for k in range(1, 5):
        site.read_at(T0 + k * INTERVAL + 40)
    alerts = query(site.db, "select kind, meter_id, ts from alerts")
    assert alerts == [("meter_unreachable", "d2", T0 + INTERVAL)]
    quiet.mode = "ok"
    site.read_at(T0 + 5 * INTERVAL + 40)
    rows = site.readings("d2")
    assert [r[0] for r in rows[-5:]] == [T0 + k * INTERVAL for k in range(1, 6)]
    assert all(r[1] == INTERVAL for r in rows)


def test_a_meter_with_less_memory_than_the_catch_up_is_read_once_reached(tmp_path: Path) -> None:
    # seven days asked for, half a day in the meter: the empty older windows are not asked for
    # again and again, the read moves on to where the entries are
    site = Site(tmp_path, Clock(T0), n=1, history_days=0.5, catch_up_days=7)
    try:
        for k in range(4):
            site.read_at(T0 + k * INTERVAL + 40)
        rows = site.readings("d0")
        assert rows and rows[-1][0] == T0 + 3 * INTERVAL
        assert all(r[1] == INTERVAL for r in rows)
    finally:
        site.close()


def test_a_wrong_password_is_a_failed_read_with_its_reason(tmp_path: Path) -> None:
    site = Site(tmp_path, Clock(T0), n=1, password=b"right-one")
    try:
        site.source.close()
        site.source = site.open(password=b"wrong-one")
        for k in range(3):
            site.read_at(T0 + k * INTERVAL + 40)
        (detail,) = query(site.db, "select payload from alerts")
        assert "AssociationRefused" in detail[0] and "diagnostic 13" in detail[0]
        assert query(site.db, "select count(*) from readings") == [(0,)]
    finally:
        site.close()
