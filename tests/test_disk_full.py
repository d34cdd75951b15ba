"""A full disk is a state, not a crash: on a real small tmpfs the agent pauses its intake when
the disk runs low (and when SQLite itself gets ``SQLITE_FULL``), keeps sending, raises a
``disk_full`` alert, and takes its readings again on its own when space returns; the same for
the buffer's byte budget (``buffer_full``). Nothing accepted is lost or doubled."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.rig import Rig
from tests.support.systemd import NotifySocket

pytestmark = [pytest.mark.services, pytest.mark.slow]

GW = "gw-a"
MB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A real file system of ``size_mb``, mounted for the test and unmounted after."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Write ``path`` until the file system has about ``leave_bytes`` free (0: until ENOSPC)."""
    chunk = b"\0" * (256 * 1024)
    with path.open("ab") as f:
        while True:
            fs = os.statvfs(path.parent)
            free = fs.f_bavail * fs.f_frsize
            if free <= leave_bytes:
                return
            try:
                f.write(chunk[: max(4096, min(len(chunk), free - leave_bytes))])
                f.flush()
            except OSError:  # ENOSPC: as full as it gets
                return


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def counters(rig: Rig) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in query(rig.db(GW), "select name, value from counters")}  # type: ignore[call-overload]
    except sqlite3.Error:
        return {}


def alert_kinds(rig: Rig) -> list[str]:
    try:
        rows = query(rig.db(GW), "select kind from alerts order by created_at")
    except sqlite3.Error:  # not created yet
        return []
    return [str(k) for (k,) in rows]


def central_alert_kinds(rig: Rig) -> set[str]:
    with psycopg.connect(rig.pg_dsn) as conn:
        return {str(k) for (k,) in conn.execute("select kind from raw.alerts")}


def latest_status(rig: Rig) -> dict[str, object]:
    with psycopg.connect(rig.pg_dsn) as conn:
        row = conn.execute(
            "select status from raw.gateway_status where gateway_id = %s and state = 'online' "
            "order by received_at desc limit 1",
            (GW,),
        ).fetchone()
    return dict(row[0]["buffer"]) if row else {}


def sim_chunks_taken(rig: Rig) -> int:
    """The simulated source's progress marker: chunks committed to the buffer."""
    rows = query(rig.db(GW), "select value from meta where key like 'sim:%:next_chunk'")
    return int(str(rows[0][0])) if rows else 0


def assert_nothing_lost_or_doubled(rig: Rig) -> None:
    """Every reading the agent accepted (the spool's and the simulator's, none pruned here) is
    in PostgreSQL once, and nothing else is."""
    accepted = {(str(m), int(t)) for m, t in query(rig.db(GW), "select meter_id, ts from readings")}  # type: ignore[call-overload]
    stored = rig.stored()
    assert rig.fed <= accepted
    assert len(stored) == len(set(stored)), "a reading stored twice"
    assert set(stored) == accepted, (
        f"{len(accepted - set(stored))} accepted readings not stored, "
        f"{len(set(stored) - accepted)} stored readings no agent accepted"
    )


def sim_env(meters: int, days: int, intervals_per_s: float) -> dict[str, str]:
    return {
        "EIOT_SIM": json.dumps(
            {
                "meters": meters,
                "days": days,
                "intervals_per_s": intervals_per_s,
                "chunk_intervals": 2,
                "theft_share": 0,
            }
        )
    }


def test_disk_full_pauses_intake_delivery_goes_on_and_intake_resumes(rig: Rig) -> None:
    with tmpfs(rig.tmp / "card", 24) as card:
        rig.buffer_dir = card
        meters, days = 60, 8  # ~23,000 readings from the simulator (192 chunks of 2 intervals)
        rig.wait_ingest_ready(rig.start_ingest())
        for n in range(2):
            rig.feed(GW, n)  # a spool backlog: 2 × 500 readings
        env = {**sim_env(meters, days, 40), "EIOT_DISK_RESERVE_MB": "4"}
        agent = rig.start_agent(GW, env=env)
        rig.wait_until(lambda: counters(rig).get("readings_accepted", 0) > 3000, 60, "intake")

        # 1. The card runs low (another program's files): below the 4 MB reserve.
        fill(card / "other-program.log", leave_bytes=2 * MB)
        rig.wait_until(lambda: "disk_full" in alert_kinds(rig), 20, "a disk_full alert")
        rig.feed(GW, 2)  # arrives while paused: stays in the spool
        took = counters(rig)["readings_accepted"]
        rig.wait_until(lambda: rig.pending(GW) == 0, 60, "delivery while the disk is full")
        time.sleep(3)
        assert counters(rig)["readings_accepted"] == took, "intake went on with the disk full"
        assert (rig.spool(GW) / "00002.jsonl").exists()
        assert counters(rig)["intake_paused_disk_full"] >= 1
        rig.wait_until(lambda: latest_status(rig).get("intake") == "disk_full", 20, "status")
        assert latest_status(rig)["full"] is True

        # 2. Full to the last byte: SQLite gets SQLITE_FULL; the agent lives on.
        fill(card / "other-program-2.log", leave_bytes=0)
        time.sleep(4)
        assert agent.alive(), rig.logs()

        # 3. Space returns: intake resumes on its own, everything arrives once.
        (card / "other-program.log").unlink()
        (card / "other-program-2.log").unlink()
        rig.wait_until(lambda: counters(rig).get("intake_resumed", 0) >= 1, 20, "resumed")
        rig.wait_until(
            lambda: (
                not any(rig.spool(GW).glob("*.jsonl"))
                and sim_chunks_taken(rig) == days * 48 // 2
                and rig.pending(GW) == 0
            ),
            120,
            "the spool and the simulated backlog delivered",
        )
        assert agent.alive(), rig.logs()
        assert_nothing_lost_or_doubled(rig)
        rig.wait_until(lambda: "disk_full" in central_alert_kinds(rig), 60, "alert at central")
        assert "Traceback" not in agent.output()
        agent.stop()


def test_buffer_budget_pauses_intake_until_sending_and_pruning_make_room(rig: Rig) -> None:
    meters, days = 100, 16  # ~78,000 readings: far more than a 4 MB budget holds
    env = {
        **sim_env(meters, days, 0),
        "EIOT_BUFFER_MAX_MB": "4",
        # the 8-day history window alone exceeds the budget: it must give way, not stall intake
    }
    agent = rig.start_agent(GW, env=env)  # no ingest yet: nothing can leave
    rig.wait_until(lambda: "buffer_full" in alert_kinds(rig), 60, "a buffer_full alert")
    took = counters(rig)["readings_accepted"]
    assert 0 < took and sim_chunks_taken(rig) < days * 48 // 2
    time.sleep(2)
    assert counters(rig)["readings_accepted"] == took  # paused, not retrying every 20 ms
    space = query(rig.db(GW), "select (select page_count from pragma_page_count) * 4096 as bytes")[
        0
    ][0]
    assert isinstance(space, int) and space <= 4 * MB + 2 * MB  # the budget, and its headroom

    rig.wait_ingest_ready(rig.start_ingest())
    rig.wait_until(lambda: counters(rig).get("intake_resumed", 0) >= 1, 60, "resumed")
    rig.wait_until(
        lambda: sim_chunks_taken(rig) == days * 48 // 2 and rig.pending(GW) == 0,
        180,
        "the simulated backlog delivered",
    )
    stored = rig.stored()
    c = counters(rig)
    assert len(stored) == len(set(stored)) == c["readings_accepted"]  # pruned here: count them
    rig.wait_until(lambda: "buffer_full" in central_alert_kinds(rig), 30, "alert at central")
    assert "Traceback" not in agent.output()


def test_an_agent_started_on_a_full_card_waits_for_room_then_delivers(rig: Rig) -> None:
    """A power cut while the card was full: at start SQLite cannot even open the write-ahead
    log. The agent says so and waits (no crash loop); once there is room it starts and
    delivers what it holds and what waited in the spool."""
    with tmpfs(rig.tmp / "card", 8) as card:
        rig.buffer_dir = card
        rig.wait_ingest_ready(rig.start_ingest())
        rig.feed(GW, 0)
        env = {"EIOT_DISK_RESERVE_MB": "1"}  # an 8 MB card
        agent = rig.start_agent(GW, env=env)
        rig.wait_delivered(30)
        agent.stop()
        gc.collect()  # this test's own readers of the buffer closed: the last close below
        with contextlib.closing(sqlite3.connect(rig.db(GW))) as conn:  # removes the WAL files
            conn.execute("pragma wal_checkpoint(truncate)")
        assert not Path(f"{rig.db(GW)}-wal").exists()
        rig.feed(GW, 1)  # arrives while the agent is down
        fill(card / "other-program.log", leave_bytes=0)
        notify = NotifySocket(rig.tmp / "notify")  # as systemd would hear it
        agent = rig.start_agent(GW, env={**env, "NOTIFY_SOCKET": str(notify.path)})
        rig.wait_until(lambda: "cannot open the buffer" in agent.output(), 20, "the complaint")
        time.sleep(2)
        assert agent.alive(), rig.logs()
        # not ready, and asking systemd for more time than TimeoutStartSec instead of being
        # killed and restarted
        assert notify.messages and all(
            m.startswith("EXTEND_TIMEOUT_USEC=") and "waiting for room" in m
            for m in notify.messages
        ), notify.messages
        (card / "other-program.log").unlink()
        rig.wait_until(
            lambda: "READY=1" in [m.split("\n")[0] for m in notify.messages], 30, "READY"
        )
        rig.wait_delivered(60)
        notify.close()
        rig.assert_exactly_once()
        assert "Traceback" not in agent.output()
        agent.stop()
