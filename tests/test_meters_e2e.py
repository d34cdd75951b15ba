"""Meters the agent reads itself, to PostgreSQL exactly once, through an agent killed mid-run
and meters that fall silent: Modbus meters (pymodbus servers) and DLMS/COSEM meters (the test
meter gurux-dlms reads in tests/test_dlms.py), the real agent (``bench.fast_agent``: its polling
clock runs fast, readings stamped in the past), the secure broker, central ingest, PostgreSQL."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from simulator.dlms_meter import DlmsMeter, DlmsPeer
from simulator.modbus_meters import ModbusPeer, fleet
from tests.support.processes import Proc
from tests.support.rig import Rig
from tests.test_modbus import free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

INTERVAL = 900
SPEED = 300.0  # 3 s a boundary
GW = "gw-a"


def test_meter_readings_reach_postgres_once_through_a_kill_and_a_silence(
    rig: Rig, tmp_path: Path
) -> None:
    t0 = time.time()
    epoch = (t0 - 3 * 86400) // INTERVAL * INTERVAL - SPEED  # the first boundary in ~1 s

    def clock() -> float:
        return epoch + (time.time() - t0) * SPEED

    ports = [free_port(), free_port()]
    buses = [fleet(4, "sdm630", clock=clock), fleet(3, "generic-u32-wh", clock=clock)]
    config = tmp_path / "agent.toml"
    lines = [
        'timezone = "Africa/Lagos"',
        "",
        "[modbus]",
        f"interval_s = {INTERVAL}",
        "poll_window_s = 300",
        "unreachable_after = 2",
    ]
    for b, (port, meters) in enumerate(zip(ports, buses, strict=True)):
        lines += [
            "",
            "[[modbus.buses]]",
            f'name = "bus{b}"',
            'kind = "tcp"',
            'host = "127.0.0.1"',
            f"port = {port}",
            "timeout_s = 0.3",
            "retries = 1",
        ]
        for m in meters:
            lines += [
                "[[modbus.buses.meters]]",
                f'meter_id = "bus{b}-u{m.unit}"',
                f"unit = {m.unit}",
                f'model = "{m.regmap.model}"',
            ]
    dlms_meters = [
        DlmsMeter(kw=1.5 + i, start_kwh=800.0 + i, memory_days=2, clock=clock) for i in range(2)
    ]
    dlms_peer = DlmsPeer(dlms_meters, [0, 0]).start()
    lines += ["", "[dlms]", f"interval_s = {INTERVAL}", "read_delay_s = 30"]
    lines += ["catch_up_days = 0.1", "unreachable_after = 2"]
    for i, port in enumerate(dlms_peer.ports):
        lines += ["[[dlms.meters]]", f'meter_id = "dlms-{i}"', 'host = "127.0.0.1"']
        lines += [f"port = {port}", "timeout_s = 0.5"]
    config.write_text("\n".join(lines) + "\n")
    clocks = ["--epoch", str(epoch), "--t0", str(t0), "--speed", str(SPEED)]
    peers = [
        ModbusPeer(m, port=p, silence_s=1.0).start() for m, p in zip(buses, ports, strict=True)
    ]
    try:
        rig.wait_ingest_ready(rig.start_ingest())
        env = {k: v for k, v in rig.agent_env(GW).items() if k != "EIOT_SPOOL_DIR"}
        agent = Proc(
            ["-m", "bench.fast_agent", "--config", str(config), *clocks],
            env,
            tmp_path / "agent.log",
        )
        rig.agents[GW] = agent
        rig.procs.append(agent)

        def boundary() -> int:
            return int((clock() - epoch) // INTERVAL)

        def wait_boundary(k: int) -> None:
            rig.wait_until(lambda: boundary() >= k, 120, f"boundary {k}")

        agent.start()
        wait_boundary(5)
        agent.kill()  # SIGKILL, whatever it was doing
        quiet = buses[1][0]
        quiet.mode = "silent"
        dlms_meters[1].mode = "silent"
        wait_boundary(7)
        agent.start()
        wait_boundary(11)
        quiet.mode = "ok"
        dlms_meters[1].mode = "ok"
        wait_boundary(15)
        agent.stop()
        last = boundary()
        # every reading the agent took is acknowledged by central: nothing lost, nothing doubled
        agent.start()
        rig.wait_until(lambda: rig.pending(GW) == 0 and rig.accepted(), 60, "all acked")
        agent.stop()
        accepted = rig.accepted()
        stored = rig.stored()
        assert len(stored) == len(set(stored))
        assert set(stored) == accepted
        with psycopg.connect(rig.pg_dsn) as conn:
            rows = conn.execute(
                "select meter_id, extract(epoch from ts)::bigint, interval_s, kwh, register_kwh "
                "from raw.readings order by meter_id, ts"
            ).fetchall()
            alerts = conn.execute(
                "select kind, meter_id from raw.alerts where kind = 'meter_unreachable' "
                "order by meter_id"
            ).fetchall()
    finally:
        for p in peers:
            p.stop()
        dlms_peer.stop()
    by_meter: dict[str, list[tuple[int, int, float, float]]] = defaultdict(list)
    for meter_id, ts, span, kwh, register in rows:
        by_meter[meter_id].append((ts, span, kwh, register))
    assert len(by_meter) == 9
    for b, meters in enumerate(buses):
        for m in meters:
            got = by_meter[f"bus{b}-u{m.unit}"]
            # aligned, contiguous: each reading starts where the one before ended
            for (ts, _, _, _), (ts2, span2, _, _) in zip(got, got[1:], strict=False):
                assert ts % INTERVAL == 0 and ts2 - span2 == ts
            # energy is conserved through the kill and the silence
            first_register = got[0][3] - got[0][2]
            assert sum(r[2] for r in got) == pytest.approx(got[-1][3] - first_register, abs=0.01)
            # a register is read when the poll gets to it, a little after its boundary: on this
            # clock (300 s a real second) a tenth of a second late is 30 s of energy
            assert got[-1][2] == pytest.approx(m.kw * got[-1][1] / 3600, abs=m.kw * 180 / 3600)
            assert got[-1][0] >= epoch + (last - 2) * INTERVAL
    quiet_rows = by_meter["bus1-u1"]
    assert max(r[1] for r in quiet_rows) >= 4 * INTERVAL  # its reading spans the silence
    # DLMS meters are caught up from their load profile: every entry, none spanning a gap,
    # stamped by the meter at its capture times
    for i, m in enumerate(dlms_meters):
        got = by_meter[f"dlms-{i}"]
        assert [r[0] for r in got] == list(range(got[0][0], got[-1][0] + 1, INTERVAL))
        assert all(r[1] == INTERVAL for r in got)
        for ts, _, kwh, register in got:
            assert register == pytest.approx(m.register_wh(ts) / 1000, abs=1e-3)
            assert kwh == pytest.approx(m.kw / 4, abs=2e-3)
        assert got[-1][0] >= epoch + (last - 2) * INTERVAL
    assert alerts == [("meter_unreachable", "bus1-u1"), ("meter_unreachable", "dlms-1")]
