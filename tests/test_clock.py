"""Wrong clocks: the agent runs under libfaketime (its wall clock stepped −1 day, +1 year and
back while it runs; its monotonic clock left alone) against a real broker, ingest and
PostgreSQL. Resends and batching wait on the monotonic clock, each step is noticed
(``clock_suspect`` in status and an alert), readings stamped by the meters' true time are not
quarantined by the gateway's wrong one, and every reading arrives once. Plus the pieces: the
clock watch, pruning bounded by the wall clock, central's latest status by receive time."""

from __future__ import annotations

import glob
import json
import math
import time
from pathlib import Path

import psycopg
import pytest

from edge_agent import cli as edge_cli
from edge_agent import wire
from edge_agent.buffer import Buffer
from edge_agent.clock import CLOCK_FLOOR, HIGH_WATER_KEY, ClockPolicy, ClockWatch
from edge_agent.validate import Validator
from tests.support.builders import Clock, row
from tests.support.processes import Mosquitto, Proc
from tests.support.rig import Rig

GW = "gw-a"
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))


def test_clock_watch_sees_steps_and_a_clock_behind_its_high_water_mark(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db")
    wall, mono = Clock(), Clock(100.0)

    def passes(seconds: float) -> None:
        wall.advance(seconds)
        mono.advance(seconds)

    policy = ClockPolicy(jump_s=60, settle_s=300, save_every_s=10)
    watch = ClockWatch(buffer, "gw", policy, wall=wall, monotonic=mono)
    watch.check()
    assert watch.trusted and buffer.alerts.undelivered() == 0
    assert watch.high_water == 0  # not stable long enough yet to raise the mark
    passes(310)
    watch.check()
    wall.advance(20)  # NTP slews 20 s: under the step threshold
    watch.check()
    assert watch.trusted and watch.high_water == wall() - 20  # saved before the slew
    before = wall()
    wall.advance(-86400)  # stepped back a day
    passes(1)
    watch.check()
    assert watch.suspect and watch.last_jump_s == -86400
    assert buffer.counters.all()["clock_jumps"] == 1
    assert [json.loads(p)["kind"] for p in buffer.alerts.payloads()] == ["clock_suspect"]
    # readings are judged against the time before the step, carried on by the monotonic clock
    assert watch.latest_now() == before + 1
    passes(400)  # settled, but still behind the mark it saved before the step
    watch.check()
    assert watch.suspect and watch.behind()
    assert watch.latest_now() == before + 401
    # a restart with the clock still behind: suspect from the start, by the saved mark
    again = ClockWatch(buffer, "gw", policy, wall=wall, monotonic=mono)
    assert again.suspect and again.latest_now() == math.inf  # no reference: central judges
    wall.advance(86400)  # NTP puts it right: one more step
    passes(1)
    watch.check()
    assert watch.suspect and buffer.counters.all()["clock_jumps"] == 2
    passes(400)
    watch.check()
    assert watch.trusted and watch.latest_now() == wall()


def test_a_clock_a_year_ahead_does_not_leave_its_mark(tmp_path: Path) -> None:
    """Stepped a year ahead and left there past the settling time, the clock raises the mark no
    faster than the monotonic clock runs: when NTP brings it back it is trusted again, not
    'behind' for a year. A mark wrong anyway is cleared by `edge-agent clock reset`."""
    buffer = Buffer(tmp_path / "b.db")
    wall, mono = Clock(), Clock(100.0)
    policy = ClockPolicy(jump_s=60, settle_s=300, save_every_s=10)
    watch = ClockWatch(buffer, "gw", policy, wall=wall, monotonic=mono)
    for _ in range(40):
        wall.advance(10)
        mono.advance(10)
        watch.check()
    true_time = wall()
    wall.advance(365 * 86400)
    for _ in range(100):  # 1000 s a year ahead
        wall.advance(10)
        mono.advance(10)
        watch.check()
        true_time += 10
    assert watch.trusted  # it settled: nothing tells a wrong clock from a right one
    assert watch.high_water < true_time + 2 * policy.jump_s
    wall.now = true_time  # NTP steps it back
    for _ in range(40):
        wall.advance(10)
        mono.advance(10)
        watch.check()
    assert watch.trusted and not watch.behind()
    # a mark raised by a clock that was wrong when the agent started: cleared by hand
    buffer.meta.set(HIGH_WATER_KEY, f"{wall() + 86400 * 30:.0f}")
    stuck = ClockWatch(buffer, "gw", policy, wall=wall, monotonic=mono)
    assert stuck.behind()
    assert edge_cli.main(["clock", "reset", "--db", str(tmp_path / "b.db")]) == 0
    for _ in range(2):
        mono.advance(10)
        stuck.check()
    assert stuck.trusted and stuck.high_water == 0
    for _ in range(35):
        mono.advance(10)
        wall.advance(10)
        stuck.check()
    assert stuck.high_water == wall()  # the current clock taken as right


def test_a_card_that_never_saw_a_time_does_not_trust_1970(tmp_path: Path) -> None:
    """A new card has no mark; a gateway booting at the epoch is still suspect (status, alert),
    and a reading stamped today is not in the future by it."""
    buffer = Buffer(tmp_path / "b.db")
    wall, mono = Clock(1000.0), Clock(5.0)
    watch = ClockWatch(buffer, "gw", wall=wall, monotonic=mono)
    watch.check()
    assert watch.suspect and watch.behind() and watch.mark == CLOCK_FLOOR
    assert [json.loads(p)["kind"] for p in buffer.alerts.payloads()] == ["clock_suspect"]
    v = Validator(wall, latest_now=watch.latest_now)
    today = {"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 0.5}
    assert not isinstance(v.check(today, "", "t"), wire.QuarantineRecord)
    for _ in range(70):  # the mark is not raised from the epoch
        mono.advance(10)
        wall.advance(10)
        watch.check()
    assert watch.high_water == 0 and watch.suspect


def test_pruning_is_bounded_by_the_wall_clock(tmp_path: Path) -> None:
    """One reading stamped a year ahead must not make a week of history look old."""
    buffer = Buffer(tmp_path / "b.db")
    clock = Clock()
    rows = [row("m", k) for k in range(48 * 7)]
    buffer.readings.accept(rows, now=clock())
    first = rows[0][1]
    buffer.readings.accept([("m-bogus", first + 365 * 86400, *rows[0][2:])], now=clock())
    buffer.db.conn.execute("update readings set acked_at = 1")  # central has them all
    now = rows[-1][1] + 1800
    assert buffer.maintenance.prune(8 * 86400, now=now) == 0
    assert buffer.readings.count() == len(rows) + 1


def test_central_takes_the_status_received_last_as_current(pg_dsn: str) -> None:
    """A status sent at +1 year by a wrong clock is not 'latest' forever: the warehouse orders
    by central's receive time (dbt mart_gateway_health), and so does this query of it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for sent, state in (
            ("2027-12-01T00:00:00Z", "online"),
            ("2026-12-01T00:00:00Z", "offline"),
        ):
            conn.execute(
                "insert into raw.gateway_status (gateway_id, sent_at, state, status) "
                "values ('gw', %s, %s, '{}')",
                (sent, state),
            )
            time.sleep(0.01)
        by_received = conn.execute(
            "select state from raw.gateway_status order by received_at desc limit 1"
        ).fetchone()
    assert by_received == ("offline",)
    mart = Path(__file__).parents[1] / "dbt/models/marts/mart_gateway_health.sql"
    assert "order by received_at desc" in mart.read_text()


# --- the agent under libfaketime ------------------------------------------------------------


def real_time_spool(rig: Rig, name: str, meters: int = 20, intervals: int = 6) -> None:
    """Readings stamped by the meters' true clock (the test's, not the agent's)."""
    end = int(time.time()) // 1800 * 1800
    lines = []
    for m in range(meters):
        for k in range(intervals):
            ts = end - 1800 * k
            meter = f"rt-{name}-{m:03d}"
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
            lines.append(json.dumps({"meter_id": meter, "ts": stamp, "kwh": 0.25}))
            rig.fed.add((meter, ts))
    tmp = rig.spool(GW) / f"{name}.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(tmp.with_suffix(""))


def statuses(rig: Rig) -> list[dict[str, object]]:
    with psycopg.connect(rig.pg_dsn) as conn:
        return [
            dict(s)
            for (s,) in conn.execute(
                "select status from raw.gateway_status where gateway_id = %s "
                "and state = 'online' order by received_at",
                (GW,),
            )
        ]


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.skipif(not LIBFAKETIME, reason="libfaketime missing: make test installs faketime")
def test_agent_under_faketime_minus_a_day_plus_a_year_and_back(
    tmp_path: Path, pg_dsn: str, topic_root: str, procs: list[Proc], private_broker: Mosquitto
) -> None:
    # Plain MQTT here: a TLS handshake checks certificates against the wrong clock too (see
    # docs/runbook.md); this test is about the agent's own timers.
    rig = Rig(tmp_path, pg_dsn, private_broker.port, topic_root, procs)
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": LIBFAKETIME[0],
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "EIOT_ACK_TIMEOUT_S": "3",
        "EIOT_ACK_TIMEOUT_MAX_S": "3",
    }
    rig.feed(GW, 0)
    agent = rig.start_agent(GW, env=env)
    # No ingest yet, and no session of it at the broker: the first batch is lost on the way.
    rig.wait_until(lambda: rig.counters(GW).get("batches_sent", 0) >= 1, 30, "a first send")

    # 1. The clock steps back a day. The lost batch is resent on the monotonic clock (the wall
    #    clock would hold it for a day), and meters' real-time readings are not 'in the future'.
    offset.write_text("-1d\n")
    rig.wait_until(lambda: rig.counters(GW).get("clock_jumps", 0) >= 1, 15, "the step seen")
    rig.wait_ingest_ready(rig.start_ingest())
    real_time_spool(rig, "behind")
    rig.wait_delivered(60)
    rig.wait_until(lambda: any(s.get("clock_suspect") for s in statuses(rig)), 20, "status")

    # 2. A year ahead, then back: both steps seen; nothing held, nothing lost.
    offset.write_text("+1y\n")
    rig.wait_until(lambda: rig.counters(GW).get("clock_jumps", 0) >= 2, 15, "the +1 y step")
    rig.feed(GW, 1)
    real_time_spool(rig, "ahead")
    rig.wait_delivered(60)
    offset.write_text("+0\n")
    rig.wait_until(lambda: rig.counters(GW).get("clock_jumps", 0) >= 3, 15, "the step back")
    rig.feed(GW, 2)
    rig.wait_delivered(60)

    counters = rig.counters(GW)
    assert counters.get("quarantined", 0) == 0, "real-time readings quarantined by a wrong clock"
    assert counters["batches_resent"] >= 1
    assert agent.alive(), rig.logs()
    assert "Traceback" not in agent.output(), agent.output()[-3000:]
    rig.assert_exactly_once()
    with psycopg.connect(rig.pg_dsn) as conn:
        kinds = [
            k for (k,) in conn.execute("select kind from raw.alerts where kind <> 'scoring_off'")
        ]
    assert "clock_suspect" in kinds
    # statuses keep coming after the steps (their timer is monotonic too)
    seen = len(statuses(rig))
    rig.wait_until(lambda: len(statuses(rig)) >= seen + 2, 15, "statuses every 2 s")
