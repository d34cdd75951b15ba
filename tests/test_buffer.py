from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent import wire
from edge_agent.buffer import Buffer, BufferFull
from edge_agent.buffer.readings import HISTORY_BY_METER_MAX
from edge_agent.migrations import LATEST, MIGRATIONS, apply, migrate, version
from tests.support.builders import row


def test_accept_is_idempotent_and_flags_conflicts(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    rows = [row(f"m{i}", k) for i in range(3) for k in range(4)]
    assert buf.readings.accept(rows, now=1.0).accepted == 12
    again = buf.readings.accept(rows[:2] + [row("m0", 0, kwh=9.0)], now=2.0)
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 2, 1)
    q = buf.db.conn.execute("select reason, raw from quarantine").fetchall()
    assert q[0][0].startswith("conflict") and '"kwh":9.0' in q[0][1]
    # the first value stays
    assert (
        buf.db.conn.execute(
            "select kwh from readings where meter_id='m0' and ts=?", (rows[0][1],)
        ).fetchone()[0]
        == 0.25
    )
    assert buf.counters.all()["readings_conflict"] == 1


@pytest.mark.parametrize(
    ("meters", "index"),
    [
        (1, "readings_meter_ts"),
        (HISTORY_BY_METER_MAX, "readings_meter_ts"),
        (HISTORY_BY_METER_MAX + 1, "readings_key"),
    ],
)
def test_history_reads_few_meters_by_meter_and_many_in_time_order(
    tmp_path: Path, meters: int, index: str
) -> None:
    buf = Buffer(tmp_path / "b.db")
    fleet = [f"m{i:03d}" for i in range(HISTORY_BY_METER_MAX + 20)]
    buf.readings.accept([row(m, k, kwh=k / 100) for m in fleet for k in range(10)], now=1.0)
    other_interval = row("m000", 3)
    other_interval = (other_interval[0], other_interval[1] + 900, 900, 5.0, *other_interval[4:])
    assert buf.readings.accept([other_interval], now=1.0).accepted == 1  # not history for 1800 s
    asked = fleet[:meters]
    statements: list[str] = []
    buf.db.conn.set_trace_callback(statements.append)
    lo, hi = row("m000", 2)[1], row("m000", 7)[1]
    got = sorted(buf.readings.history(asked, lo, hi, 1800).fetchall())
    buf.db.conn.set_trace_callback(None)
    expected = sorted((m, row(m, k)[1], k / 100, 1, None, None) for m in asked for k in range(2, 8))
    assert got == expected
    plan = buf.db.conn.execute(f"explain query plan {statements[-1]}").fetchall()
    assert any(f"USING INDEX {index} " in step[3] for step in plan), plan


def test_same_key_twice_in_one_call(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    res = buf.readings.accept([row("m", 0), row("m", 0), row("m", 0, kwh=1.0)], now=1.0)
    assert (res.accepted, res.duplicates, res.conflicts) == (1, 1, 1)


def test_batches_are_frozen_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = Buffer(path)
    buf.readings.accept([row("m", k) for k in range(10)], now=1.0)
    b1 = buf.batches.form("gw", 4, now=2.0, compress=True)
    b2 = buf.batches.form("gw", 4, now=2.0, compress=True)
    assert b1 and b2 and b1.readings == 4 and b2.readings == 4 and b1.batch_id != b2.batch_id
    buf.close()
    again = Buffer(path)
    open_ = again.batches.open()
    assert [b.batch_id for b in open_] == [b1.batch_id, b2.batch_id]
    assert again.batches.payload(b1.batch_id) == b1.payload  # same bytes after a restart
    body = wire.BatchEnvelope.model_validate(wire.decode(b1.payload))
    readings = [wire.Reading.model_validate(r) for r in body.reading_items()]
    assert [r.ts for r in readings] == [
        datetime.fromtimestamp(row("m", k)[1], UTC) for k in range(4)
    ]
    assert again.readings.pending == 10


def test_ack_releases_and_prune_keeps_history(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", k) for k in range(48 * 10)], now=1.0)  # ten days
    batch = buf.batches.form("gw", 10_000, now=2.0, compress=True)
    assert batch is not None
    assert not buf.batches.apply_ack(wire.Ack(batch_id="unknown", status="stored"), now=3.0)
    assert buf.batches.apply_ack(wire.Ack(batch_id=batch.batch_id, status="stored"), now=3.0)
    assert not buf.batches.apply_ack(wire.Ack(batch_id=batch.batch_id, status="stored"), now=3.0)
    assert buf.readings.pending == 0
    pruned = buf.maintenance.prune(retention_s=8 * 86400)
    assert pruned == 48 * 2 - 1  # readings older than the 8-day window before the newest
    assert buf.maintenance.stats().total_readings == 48 * 8 + 1


def test_prune_never_touches_unacknowledged(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", k) for k in range(48 * 10)], now=1.0)
    assert buf.maintenance.prune(retention_s=86400) == 0


def test_cap_refuses_without_writing(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", cap=5)
    buf.readings.accept([row("m", k) for k in range(4)], now=1.0)
    with pytest.raises(BufferFull):
        buf.readings.accept([row("m", k) for k in range(4, 6)], now=1.0)
    assert buf.maintenance.stats().total_readings == 4
    assert buf.counters.all()["readings_refused_full"] == 2


def test_cap_evict_oldest_counts(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", cap=5, cap_policy="evict_oldest")
    buf.readings.accept([row("m", k) for k in range(5)], now=1.0)
    res = buf.readings.accept([row("m", k) for k in range(5, 7)], now=1.0)
    assert res.evicted == 2 and buf.readings.pending == 5
    assert buf.counters.all()["readings_evicted"] == 2


def test_meta_commits_with_readings(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", 0)], now=1.0, meta={"src:next": 7})
    assert buf.meta.get("src:next") == "7"


def test_batch_ids_differ_across_buffer_files(tmp_path: Path) -> None:
    a, b = Buffer(tmp_path / "a.db"), Buffer(tmp_path / "b.db")
    for buf in (a, b):
        buf.readings.accept([row("m", 0)], now=1.0)
    ba, bb = a.batches.form("gw", 10, 1.0, True), b.batches.form("gw", 10, 1.0, True)
    assert ba and bb and ba.batch_id != bb.batch_id  # a replaced SD card never reuses ids


def test_migrations_idempotent_and_versioned(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    assert version(buf.db.conn) == LATEST
    assert migrate(buf.db.conn) == LATEST
    tables = {
        t for (t,) in buf.db.conn.execute("select name from sqlite_master where type='table'")
    }
    assert {"readings", "quarantine", "batches", "counters", "meta", "spool_files"} <= tables
    buf.db.conn.execute(f"pragma user_version = {LATEST + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        migrate(buf.db.conn)


def _schema(conn: sqlite3.Connection) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, pk) and every index (columns,
    unique, partial condition), independent of how the DDL was spelled."""
    out: dict[str, object] = {}
    for name, kind, sql in conn.execute(
        "select name, type, sql from sqlite_master where name not like 'sqlite_%' order by name"
    ):
        if kind == "table":
            out[name] = [tuple(c[1:]) for c in conn.execute(f'pragma table_xinfo("{name}")')]
        else:
            cols = [c[2] for c in conn.execute(f'pragma index_info("{name}")')]
            where = sql.lower().split(" where ", 1)[1].strip() if " where " in sql.lower() else ""
            out[name] = (cols, "unique" in sql.lower(), where)
    return out


def test_buffer_of_earlier_agents_migrates_to_the_schema_of_a_fresh_one(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    ddl = Path(__file__).with_name("support").joinpath("buffer_v3_sqlite_utils.sql").read_text()
    old.executescript(ddl + "\npragma user_version = 3;")
    old.execute(
        "insert into spool_files (sha256, name, processed_at, readings, quarantined, outcome) "
        "values ('ab', 'day1.csv', 1.0, 5, 0, 'done')"
    )
    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    for number in (1, 2, 3):
        apply(fresh, number)
    assert _schema(fresh) == _schema(old)  # the SQL files rebuild what sqlite-utils made
    assert migrate(old) == migrate(fresh) == LATEST == len(MIGRATIONS)
    assert _schema(old) == _schema(fresh)
    row_ = old.execute("select outcome, records_done from spool_files").fetchone()
    assert row_ == ("done", 0)


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    apply(conn, 1)
    conn.execute("create table alerts (x integer)")  # v2 will fail to create it
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        migrate(conn)
    assert version(conn) == 1 and not conn.in_transaction
    assert conn.execute("select count(*) from sqlite_master where name = 'models'").fetchone() == (
        0,
    )


def test_quarantine_rows_travel_in_batches(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    rec = wire.QuarantineRecord.of("garbage", "malformed_json", datetime.now(UTC), "spool:x")
    buf.readings.accept([], [rec], now=1.0)
    batch = buf.batches.form("gw", 10, now=2.0, compress=False)
    assert batch is not None and batch.quarantined == 1
    body = wire.decode(batch.payload)
    assert body["quarantined"][0]["reason"] == "malformed_json"
    assert wire.BatchEnvelope.model_validate(body).quarantined[0]["source"] == "spool:x"


def test_seq_never_reused_after_the_newest_rows_are_pruned(tmp_path: Path) -> None:
    """A late (old) reading accepted last, then acked and pruned, must not let the next reading
    take a seq at or below the batched-up-to marker: it would never be sent."""
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", k) for k in range(400, 500)], now=1.0)
    buf.readings.accept([row("late", 0)], now=1.0)  # the old reading is the newest row
    batch = buf.batches.form("gw", 1000, now=2.0, compress=True)
    assert batch is not None and batch.readings == 101
    buf.batches.apply_ack(wire.Ack(batch_id=batch.batch_id, status="stored"), now=3.0)
    assert (
        buf.maintenance.prune(retention_s=86400) >= 1
    )  # removes "late", the row with the highest seq
    buf.close()
    buf = Buffer(tmp_path / "b.db")  # also across a restart
    buf.readings.accept([row("m", 500)], now=4.0)
    nxt = buf.batches.form("gw", 1000, now=5.0, compress=True)
    assert nxt is not None and nxt.readings == 1


def test_a_batch_carries_bounded_quarantine_text(tmp_path: Path) -> None:
    from edge_agent.buffer.quarantine import MAX_BATCH_QUARANTINE_CHARS

    buf = Buffer(tmp_path / "b.db")
    big = [wire.QuarantineRecord.of("x" * 16000, "r", datetime.now(UTC), "src") for _ in range(400)]
    buf.readings.accept([], big, now=1.0)
    first = buf.batches.form("gw", 10_000, now=2.0, compress=True)
    assert first is not None and 0 < first.quarantined * 16000 <= MAX_BATCH_QUARANTINE_CHARS
    second = buf.batches.form("gw", 10_000, now=2.0, compress=True)
    assert second is not None and first.quarantined + second.quarantined <= 400


def test_prune_removes_quarantine_of_acknowledged_quarantine_only_batches(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.readings.accept([row("m", 0)], now=1.0)
    rec = wire.QuarantineRecord.of("garbage", "malformed_json", datetime.now(UTC), "spool:x")
    b1 = buf.batches.form("gw", 10, now=2.0, compress=True)
    buf.readings.accept([], [rec], now=2.0)
    b2 = buf.batches.form("gw", 10, now=2.0, compress=True)
    assert b1 and b2 and b2.readings == 0 and b2.quarantined == 1
    for b in (b1, b2):
        buf.batches.apply_ack(wire.Ack(batch_id=b.batch_id, status="stored"), now=3.0)
    buf.maintenance.prune(retention_s=86400)
    assert buf.db.conn.execute("select count(*) from quarantine").fetchone()[0] == 0


def test_oldest_pending_ts_with_acks_out_of_order(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")

    def naive() -> int | None:
        value = buf.db.conn.execute(
            "select min(ts) from readings where acked_at is null"
        ).fetchone()
        return None if value[0] is None else int(value[0])

    # Readings arrive late for some meters: seq order is not ts order.
    buf.readings.accept([row("m1", k) for k in range(20, 40)], now=1.0)
    buf.readings.accept([row("m2", k) for k in range(20)], now=2.0)
    buf.readings.accept([row("m3", k) for k in range(10, 30)], now=3.0)
    batches = [buf.batches.form("gw", 15, now=4.0, compress=False) for _ in range(3)]
    assert all(batches)
    assert buf.maintenance.stats().oldest_pending_ts == naive() == row("m2", 0)[1]
    for b in (batches[1], batches[2]):  # later batches answered first
        assert b is not None and buf.batches.apply_ack(
            wire.Ack(batch_id=b.batch_id, status="stored"), 5.0
        )
        assert buf.maintenance.stats().oldest_pending_ts == naive()
    first = batches[0]
    assert first is not None and buf.batches.apply_ack(
        wire.Ack(batch_id=first.batch_id, status="stored"), 6.0
    )
    assert (
        buf.maintenance.stats().oldest_pending_ts == naive() == row("m3", 15)[1]
    )  # the unbatched tail
    while (b := buf.batches.form("gw", 100, now=7.0, compress=False)) is not None:
        buf.batches.apply_ack(wire.Ack(batch_id=b.batch_id, status="stored"), 8.0)
    assert buf.maintenance.stats().oldest_pending_ts is None and naive() is None
