"""A buffer the card damaged (edge_agent/buffer/salvage.py), on real SQLite files damaged as a
card damages them: a page of the readings table overwritten with noise, the header overwritten,
the file cut short; a power cut at each step of a recovery; a budget too small for everything.
What is read back is what was written, never made up; what cannot be read is counted. The
agent delivering a salvaged buffer through the real reading path: tests/test_faults.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent import wire
from edge_agent.buffer import Buffer
from edge_agent.buffer.db import DiskFull
from edge_agent.buffer.outbox import AlertRecord
from edge_agent.buffer.salvage import check, damaged, mark_suspect, open_checked
from tests.support.builders import T0, row

REPO = Path(__file__).resolve().parents[1]
COLUMNS = "meter_id, ts, interval_s, kwh, voltage_v, supply_on, flags, score, accepted_at"


@dataclass
class Before:
    """What the buffer held before it was damaged."""

    incarnation: str
    pending: dict[tuple[str, int], tuple[object, ...]]
    acked: dict[tuple[str, int], tuple[object, ...]]
    seq: dict[tuple[str, int], int]
    counters: dict[str, int]


def readings(conn: sqlite3.Connection, where: str) -> dict[tuple[str, int], tuple[object, ...]]:
    return {
        (r[0], r[1]): tuple(r)
        for r in conn.execute(f"select {COLUMNS} from readings where {where}")  # noqa: S608
    }


def filled(path: Path) -> Before:
    """A buffer as a gateway leaves it: 3,000 readings of 30 meters, 1,500 acknowledged, 1,000
    in batches still open, 500 not batched; quarantine records delivered and not; alerts; a
    source's progress."""
    buf = Buffer(path)
    bad = wire.QuarantineRecord.of("{bad", "malformed_json: x", datetime.now(UTC), "spool:a")
    buf.readings.accept(
        [row(f"m{m:02d}", k, kwh=0.01 * (m + k)) for m in range(30) for k in range(50)],
        [bad],
        now=1.0,
        meta={"spool.progress": "00042.jsonl:17"},
    )
    buf.readings.accept(
        [row(f"m{m:02d}", k, kwh=0.01 * (m + k)) for m in range(30) for k in range(50, 100)],
        now=2.0,
    )
    batches = [buf.batches.form("gw", 500, now=3.0, compress=True) for _ in range(5)]
    assert all(batches)
    late = wire.QuarantineRecord.of("{late", "malformed_json: y", datetime.now(UTC), "spool:b")
    buf.readings.accept([], [late], now=3.0)
    for b in (batches[0], batches[2], batches[3]):  # acknowledged out of order
        assert b is not None
        assert buf.batches.apply_ack(wire.Ack(batch_id=b.batch_id, status="stored"), now=4.0)
    buf.alerts.add([AlertRecord("al-1", "anomaly", "m01", T0 + 1800, '{"x":1}')], now=5.0)
    conn = buf.db.conn
    before = Before(
        incarnation=str(buf.db.incarnation),
        pending=readings(conn, "acked_at is null"),
        acked=readings(conn, "acked_at is not null"),
        seq={(m, t): s for m, t, s in conn.execute("select meter_id, ts, seq from readings")},
        counters=buf.counters.all(),
    )
    assert (len(before.pending), len(before.acked)) == (1500, 1500)
    buf.close()
    return before


def leaf_pages(path: Path, table: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [
            int(p)
            for (p,) in conn.execute(
                "select pageno from dbstat where name = ? and pagetype = 'leaf' order by pageno",
                (table,),
            )
        ]


def damage_page(path: Path, page: int, seed: int = 7) -> None:
    """Noise over one page, as a worn card returns it (the write-ahead log folded in first, so
    that no newer copy of the page hides the damage)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("pragma wal_checkpoint(truncate)")
        size = int(conn.execute("pragma page_size").fetchone()[0])
    noise = random.Random(seed).randbytes(size)
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(noise)


def flip_text_byte(path: Path, page: int, needle: bytes) -> None:
    """The first byte of ``needle`` (a meter id) in ``page`` turned into one that is not
    UTF-8: a flipped bit no page check sees."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("pragma wal_checkpoint(truncate)")
        size = int(conn.execute("pragma page_size").fetchone()[0])
    data = bytearray(path.read_bytes())
    at = data.index(needle, (page - 1) * size)
    assert at < page * size, f"no {needle!r} in page {page}"
    data[at] = 0xFF
    path.write_bytes(bytes(data))


def reopened(path: Path) -> Buffer:
    assert check(path) is None, "the new buffer is not whole"
    return Buffer(path)


def unreadable_rows(damaged_file: Path) -> set[tuple[str, int]]:
    """The readings of a damaged file that cannot be read, each asked for alone (an oracle
    independent of the salvage's walk), by key as its (ts, meter_id) index gives them."""
    lost: set[tuple[str, int]] = set()
    with contextlib.closing(sqlite3.connect(f"file:{damaged_file}?mode=ro", uri=True)) as conn:
        listed = conn.execute(
            "select rowid, meter_id, ts from readings indexed by readings_key"
        ).fetchall()
        for rowid, meter, ts in listed:
            try:
                conn.execute("select * from readings where rowid = ?", (rowid,)).fetchall()
            except sqlite3.DatabaseError:
                lost.add((meter, ts))
    return lost


def test_a_whole_buffer_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    filled(path)
    stamp = path.stat().st_mtime_ns
    assert open_checked(path) is None
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db"]
    assert open_checked(tmp_path / "new.db") is None  # no buffer yet: nothing to check


def test_a_damaged_page_of_readings_loses_that_page_only_and_the_rest_is_sent_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    before = filled(path)
    pages = leaf_pages(path, "readings")
    damage_page(path, pages[len(pages) * 3 // 4])  # among the readings not yet acknowledged
    assert check(path) is not None
    with pytest.raises(sqlite3.DatabaseError):  # what the agent met at every start
        with sqlite3.connect(path) as conn:
            conn.execute("select count(*), sum(kwh) from readings").fetchall()
    status = [sys.executable, "-m", "edge_agent", "status", "--db", str(path)]
    told = subprocess.run(status, capture_output=True, text=True, cwd=REPO)
    assert told.returncode == 3 and "salvages it at its next start" in told.stderr, told.stderr

    progress: list[str] = []  # the agent hands these to systemd (more time to start)
    recovery = open_checked(path, on_progress=progress.append)
    assert recovery is not None and recovery.cut_short_at is None
    assert any("readings" in p for p in progress), progress
    assert (tmp_path / "b.db.corrupt-1").exists(), "the damaged file is kept"
    assert not (tmp_path / "b.db.recovery").exists() and not (tmp_path / "b.db.salvaging").exists()

    buf = reopened(path)
    conn = buf.db.conn
    pending, acked = readings(conn, "acked_at is null"), readings(conn, "acked_at is not null")
    lost = (before.pending.keys() | before.acked.keys()) - (pending.keys() | acked.keys())
    # what comes back is what was written, each where it was: nothing made up
    assert pending.items() <= before.pending.items() and acked.items() <= before.acked.items()
    # exactly the rows of that page, no more (the row before it too is read)
    assert lost == unreadable_rows(tmp_path / "b.db.corrupt-1") and 0 < len(lost) <= 100
    seqs = sorted(before.seq[k] for k in lost)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "lost rows are not one page"
    assert (
        recovery.readings_pending
        == len(pending)
        == len(before.pending) - len(lost & before.pending.keys())
    )
    assert recovery.readings_history == len(acked)
    assert recovery.unreadable == {"readings": len(lost)}, "each lost rowid counted once"

    # the quarantine record of an acknowledged batch was delivered; the later one was not
    assert conn.execute("select raw, batch_id from quarantine").fetchall() == [("{late", None)]

    # a new incarnation; every salvaged pending reading goes out again in its batches, the
    # acknowledged ones never
    assert buf.db.incarnation != before.incarnation
    formed = 0
    while (batch := buf.batches.form("gw", 500, now=10.0, compress=False)) is not None:
        assert batch.batch_id.startswith(buf.db.incarnation + "-")
        formed += batch.readings
    sent = conn.execute(
        "select meter_id, ts from readings where batch_id like ?", (buf.db.incarnation + "-%",)
    ).fetchall()
    assert formed == len(sent) == len(pending) and set(sent) == pending.keys()

    counters = buf.counters.all()
    assert counters["buffer_recoveries"] == 1
    assert counters["readings_salvaged"] == len(pending)
    assert counters["readings_accepted"] == before.counters["readings_accepted"]
    assert buf.meta.get("spool.progress") == "00042.jsonl:17", "the source resumes where it was"
    record = json.loads(buf.meta.get("buffer_recovery") or "{}")
    assert record["aside"] == "b.db.corrupt-1" and record["readings_pending"] == len(pending)
    assert [r[0] for r in conn.execute("select alert_id from alerts")] == ["al-1"]
    buf.close()

    # what the field engineer reads
    shown = subprocess.run([*status, "--json"], capture_output=True, text=True, cwd=REPO)
    assert json.loads(shown.stdout)["buffer_recovery"] == record, shown.stderr
    text = subprocess.run(status, capture_output=True, text=True, cwd=REPO).stdout
    assert "RECOVERED" in text and "b.db.corrupt-1" in text and "replace the SD card" in text

    again = open_checked(path)  # the new file is whole: nothing more happens
    assert again is None and not (tmp_path / "b.db.corrupt-2").exists()


def test_a_header_of_noise_gives_an_empty_buffer_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    filled(path)
    with open(path, "r+b") as handle:
        handle.write(b"\xff" * 100)
    recovery = open_checked(path)
    assert recovery is not None and "not a database" in recovery.reason
    assert recovery.readings_pending == 0 and recovery.unreadable == {"*": 1}
    buf = reopened(path)
    assert buf.readings.pending == 0 and buf.counters.all()["buffer_recoveries"] == 1
    buf.close()
    assert (tmp_path / "b.db.corrupt-1").stat().st_size > 100_000


def test_a_file_cut_short_gives_back_what_it_still_holds(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    before = filled(path)
    os.truncate(path, path.stat().st_size // 2)
    recovery = open_checked(path)
    assert recovery is not None
    buf = reopened(path)
    got = readings(buf.db.conn, "1")
    assert got.items() <= (before.pending | before.acked).items()
    assert len(got) > 500, "the readings in the first half were not salvaged"
    buf.close()


@pytest.mark.parametrize("point", ["salvage.aside", "salvage.copied", "salvage.install"])
def test_a_power_cut_during_a_recovery_is_resumed_at_the_next_start(
    tmp_path: Path, point: str
) -> None:
    path = tmp_path / "b.db"
    filled(path)
    damage_page(path, leaf_pages(path, "readings")[-3])
    twin = tmp_path / "twin" / "b.db"  # the same damage, recovered without a cut
    twin.parent.mkdir()
    shutil.copy(path, twin)
    expected = open_checked(twin)
    assert expected is not None

    code = f"from edge_agent.buffer.salvage import open_checked; open_checked({str(path)!r})"
    cut = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "EIOT_FAILPOINT": point},
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert cut.returncode == -9, cut.stderr.decode()[-2000:]
    assert (tmp_path / "b.db.recovery").exists()

    resumed = open_checked(path)
    assert resumed is not None and resumed.readings_pending == expected.readings_pending
    assert not (tmp_path / "b.db.recovery").exists()
    assert not (tmp_path / "b.db.corrupt-2").exists(), "the recovery started over"
    buf, want = reopened(path), reopened(twin)
    for where in ("acked_at is null", "acked_at is not null"):
        assert readings(buf.db.conn, where) == readings(want.db.conn, where)
    numbering = "select seq, meter_id, ts, batch_id is null from readings order by seq"
    assert buf.db.conn.execute(numbering).fetchall() == want.db.conn.execute(numbering).fetchall()
    assert buf.meta.get("batched_upto") == want.meta.get("batched_upto")
    record = json.loads(buf.meta.get("buffer_recovery") or "{}")
    assert record["readings_pending"] == expected.readings_pending
    assert buf.counters.all()["buffer_recoveries"] == 1
    buf.close()
    want.close()


def test_a_budget_too_small_keeps_the_unacknowledged_readings_first(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    before = filled(path)
    damage_page(path, leaf_pages(path, "readings")[0])
    budget = 160 * 1024  # room for some of the 1,500 pending readings and their index
    recovery = open_checked(path, max_bytes=budget)
    assert recovery is not None and recovery.cut_short_at == "readings"
    assert 0 < recovery.readings_pending < len(before.pending)
    assert recovery.readings_history == 0, "history copied before the pending readings"
    buf = reopened(path)
    assert readings(buf.db.conn, "1").items() <= before.pending.items()
    assert json.loads(buf.meta.get("buffer_recovery") or "{}")["cut_short_at"] == "readings"
    buf.close()
    assert path.stat().st_size <= budget + (1 << 20)


def test_a_marker_the_card_garbled_does_not_stop_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    before = filled(path)
    (tmp_path / "b.db.recovery").write_bytes(b"\x00\xff{")
    assert open_checked(path) is None  # the buffer itself is whole
    assert not (tmp_path / "b.db.recovery").exists()
    buf = reopened(path)
    assert buf.readings.pending == len(before.pending)
    buf.close()


def high_seq_buffer(path: Path, first_seq: int) -> dict[tuple[str, int], tuple[object, ...]]:
    """A buffer whose readings are numbered from ``first_seq`` (older ones acknowledged and
    pruned long ago, as on a gateway that has run for months); all of them unacknowledged."""
    buf = Buffer(path)
    with buf.db.transaction():
        buf.meta.set("next_seq", first_seq)
    buf.close()
    buf = Buffer(path)
    buf.readings.accept([row(f"m{m:02d}", k) for m in range(30) for k in range(100)], now=1.0)
    assert buf.db.conn.execute("select min(seq) from readings").fetchone()[0] == first_seq
    pending = readings(buf.db.conn, "1")
    buf.close()
    return pending


@pytest.mark.parametrize("first_seq", [1, 100_000, 1_000_000])
def test_the_first_page_damaged_loses_that_page_whatever_the_numbering(
    tmp_path: Path, first_seq: int
) -> None:
    path = tmp_path / "b.db"
    before = high_seq_buffer(path, first_seq)
    damage_page(path, leaf_pages(path, "readings")[0])
    recovery = open_checked(path)
    assert recovery is not None
    buf = reopened(path)
    got = readings(buf.db.conn, "acked_at is null")
    assert got.items() <= before.items()
    assert before.keys() - got.keys() == unreadable_rows(tmp_path / "b.db.corrupt-1")
    assert 0 < recovery.readings_lost == len(before) - len(got) <= 100, recovery
    assert recovery.readings_pending == len(got)
    buf.close()


def test_two_damaged_runs_with_a_healthy_page_between_lose_only_their_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    before = high_seq_buffer(path, 1_000_000)
    pages = leaf_pages(path, "readings")
    for i, page in enumerate([*pages[5:9], *pages[10:14]]):
        damage_page(path, page, seed=20 + i)
    recovery = open_checked(path)
    assert recovery is not None
    buf = reopened(path)
    got = readings(buf.db.conn, "1")
    lost = before.keys() - got.keys()
    assert lost == unreadable_rows(tmp_path / "b.db.corrupt-1")
    assert recovery.readings_lost == recovery.unreadable["readings"] == len(lost) > 0
    buf.close()


def test_a_damaged_file_recovered_long_ago_is_not_salvaged_again(tmp_path: Path) -> None:
    """The buffer deleted by hand after a recovery, its damaged file still there: without a
    recovery marker, the next start makes a new buffer, not a second copy of old readings."""
    path = tmp_path / "b.db"
    filled(path)
    damage_page(path, leaf_pages(path, "readings")[4])
    assert open_checked(path) is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert open_checked(path) is None and not path.exists()


def test_a_recovery_after_a_recovery_whose_last_page_was_damaged(tmp_path: Path) -> None:
    """The last leaf (the page written most) damaged: the table cannot say its highest seq,
    the (ts, meter_id) index does; a second damage later is salvaged as the first."""
    path = tmp_path / "b.db"
    before = high_seq_buffer(path, 1)
    damage_page(path, leaf_pages(path, "readings")[-1])
    first = open_checked(path)
    assert first is not None and first.readings_lost is not None
    buf = reopened(path)
    seqs = [s for (s,) in buf.db.conn.execute("select seq from readings order by seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "numbered afresh, compactly"
    assert seqs[0] > len(before) - 100 and seqs[-1] < 2 * len(before), seqs[:3]
    left = readings(buf.db.conn, "1")
    buf.close()
    pages = leaf_pages(path, "readings")
    damage_page(path, pages[len(pages) // 2], seed=9)
    second = open_checked(path)
    assert second is not None and second.aside == "b.db.corrupt-2"
    buf = reopened(path)
    got = readings(buf.db.conn, "1")
    assert got.items() <= left.items() and 0 < len(left) - len(got) <= 100
    assert second.readings_lost == len(left) - len(got)
    buf.close()


def test_a_text_value_that_is_not_utf8_is_salvaged_around_once_the_agent_met_it(
    tmp_path: Path,
) -> None:
    """A flipped bit in a meter id: the start's quick_check does not see it, reading that row
    fails. The agent marks the buffer suspect (edge-agent run does on such an error) and the
    next start checks it thoroughly and salvages it; the row is counted, the rest kept."""
    path = tmp_path / "b.db"
    buf = Buffer(path)
    buf.readings.accept([row(f"meter{m:02d}", k) for m in range(30) for k in range(100)], now=1.0)
    before = readings(buf.db.conn, "1")
    buf.close()
    flip_text_byte(path, leaf_pages(path, "readings")[3], b"meter")
    assert check(path) is None, "quick_check does not read the values against the indexes"
    assert "missing from index" in (check(path, thorough=True) or "")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        with pytest.raises(sqlite3.DatabaseError) as met:
            conn.execute("select * from readings").fetchall()  # the table, not an index
    assert damaged(met.value)
    assert open_checked(path) is None  # nothing marked: the check alone passes it

    mark_suspect(path, str(met.value))
    recovery = open_checked(path)
    assert recovery is not None and "UTF-8" in recovery.reason
    assert not (tmp_path / "b.db.suspect").exists()
    buf = reopened(path)
    got = readings(buf.db.conn, "1")
    assert got.items() <= before.items() and len(got) == len(before) - 1
    assert recovery.unreadable == {"readings": 1} and recovery.readings_lost == 1
    buf.close()


def test_a_lost_meta_page_does_not_let_a_conflict_pass_as_new(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    filled(path)
    damage_page(path, leaf_pages(path, "meta")[0])
    assert open_checked(path) is not None
    buf = reopened(path)
    result = buf.readings.accept([row("m01", 3, kwh=9.99)], now=20.0)  # another value
    assert (result.accepted, result.conflicts) == (0, 1), result
    buf.close()


def test_a_marker_garbled_after_the_file_was_set_aside_resumes_from_it(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    before = filled(path)
    damage_page(path, leaf_pages(path, "readings")[-2])
    code = f"from edge_agent.buffer.salvage import open_checked; open_checked({str(path)!r})"
    cut = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "EIOT_FAILPOINT": "salvage.aside"},
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert cut.returncode == -9 and not path.exists()
    (tmp_path / "b.db.recovery").write_bytes(b"\x00garbage")
    recovery = open_checked(path)
    assert recovery is not None and recovery.aside == "b.db.corrupt-1"
    buf = reopened(path)
    got = readings(buf.db.conn, "acked_at is null")
    assert got.items() <= before.pending.items()
    assert len(before.pending) - len(got) <= 100 and recovery.readings_pending == len(got)
    buf.close()


def test_no_room_on_the_card_waits_and_keeps_everything_for_later(tmp_path: Path) -> None:
    """On a real small file system nearly full: the salvage does not install a part of the
    buffer (the rest would stay in the damaged file only); it says DiskFull (the agent's start
    waits for room), and once there is room it copies everything."""
    from tests.test_disk_full import tmpfs

    with tmpfs(tmp_path / "card", 3) as card:
        path = card / "b.db"
        before = filled(path)
        damage_page(path, leaf_pages(path, "readings")[5])
        ballast = card / "other-program.log"
        free = shutil.disk_usage(card).free
        ballast.write_bytes(b"x" * max(0, free - 400 * 1024))
        with pytest.raises(DiskFull):
            open_checked(path)
        assert (card / "b.db.recovery").exists() and not path.exists()
        ballast.unlink()
        recovery = open_checked(path)
        assert recovery is not None and recovery.cut_short_at is None
        buf = reopened(path)
        got = readings(buf.db.conn, "acked_at is null")
        assert got.items() <= before.pending.items()
        assert recovery.readings_lost == len(before.pending) + len(before.acked) - len(
            readings(buf.db.conn, "1")
        )
        buf.close()


def test_room_for_the_waiting_readings_but_not_the_history_installs_them(
    tmp_path: Path,
) -> None:
    from tests.test_disk_full import tmpfs

    with tmpfs(tmp_path / "card", 4) as card:
        path = card / "b.db"
        before = filled(path)
        damage_page(path, leaf_pages(path, "readings")[2])
        free = shutil.disk_usage(card).free
        # the room left: 1 MB for the record, ~0.3 MB of copy (the waiting readings, not all
        # of the history)
        (card / "other-program.log").write_bytes(b"x" * max(0, free - (1 << 20) - 300 * 1024))
        recovery = open_checked(path)
        assert recovery is not None and recovery.cut_short_at == "readings_history"
        assert path.exists()
        buf = reopened(path)
        got = readings(buf.db.conn, "acked_at is null")
        assert got.items() <= before.pending.items()
        assert before.pending.keys() - got.keys() <= unreadable_rows(card / "b.db.corrupt-1")
        assert len(readings(buf.db.conn, "acked_at is not null")) < len(before.acked)
        buf.close()
