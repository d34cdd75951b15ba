from __future__ import annotations

import json
from pathlib import Path

from edge_agent import wire
from edge_agent.buffer import Buffer
from edge_agent.sources import Intake
from edge_agent.sources.spool import SpoolSource
from edge_agent.validate import Validator, split
from edge_agent.wire import QuarantineRecord
from tests.support.builders import Clock

NOW = 1_790_000_000.0  # 2026-09-21


def test_validator_reasons() -> None:
    v = Validator(Clock(NOW), max_future_s=300, max_kw=10)
    ok = v.check({"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 1}, "", "t")
    assert not isinstance(ok, QuarantineRecord)
    future = v.check({"meter_id": "m", "ts": "2027-01-01T00:00:00Z", "kwh": 1}, "", "t")
    assert isinstance(future, QuarantineRecord) and future.reason == "ts_in_future"
    big = v.check({"meter_id": "m", "ts": "2026-03-01T00:30:00Z", "kwh": 6}, "", "t")
    assert isinstance(big, QuarantineRecord) and big.reason.startswith("implausible_kwh")
    assert isinstance(v.check([1], "", "t"), QuarantineRecord)
    rows, bad = split(
        v.check_json(
            b'[{"meter_id":"a","ts":"2026-03-01T00:30:00Z","kwh":1},{"meter_id":"a"}]', "t"
        )
    )
    assert len(rows) == 1 and "kwh" in bad[0].reason and "ts" in bad[0].reason
    assert v.check_json(b"\xff\xfe", "t")[0].reason.startswith("malformed_json")  # type: ignore[union-attr]


def _spool(tmp_path: Path) -> tuple[Buffer, SpoolSource]:
    buf = Buffer(tmp_path / "b.db")
    return buf, SpoolSource(tmp_path / "spool", _intake(buf), buf.spool)


def _intake(buf: Buffer) -> Intake:
    return Intake(buf.readings, buf.meta, Validator(Clock(NOW)))


def test_spool_files_done_failed_never_twice(tmp_path: Path) -> None:
    buf, src = _spool(tmp_path)
    d = tmp_path / "spool"
    (d / "a.jsonl").write_text(
        "\n".join(
            json.dumps({"meter_id": "m", "ts": f"2026-03-01T0{k}:00:00Z", "kwh": k})
            for k in range(1, 4)
        )
        + "\nnot json\n"
    )
    (d / "b.csv").write_text(
        "meter_id,ts,kwh,flags\nm2,2026-03-01 00:30:00,0.5,cover_open;magnetic\n"
        "m2,2026-03-01 01:00:00,-1,\n"
    )
    (d / "c.csv").write_text("what,is,this\n1,2,3\n")
    (d / "d.bin").write_bytes(b"\x00")  # not a spool file name: left alone
    (d / "e.csv.tmp").write_text("partial")
    src.poll(NOW)
    assert sorted(p.name for p in (d / "done").iterdir()) == ["a.jsonl", "b.csv"]
    assert [p.name for p in (d / "failed").iterdir()] == ["c.csv"]
    assert {p.name for p in d.iterdir() if p.is_file()} == {"d.bin", "e.csv.tmp"}
    assert buf.maintenance.stats().total_readings == 4
    reasons = sorted(r for (r,) in buf.db.conn.execute("select reason from quarantine"))
    assert len(reasons) == 3 and any(
        r.startswith("unreadable_file: unknown CSV header") for r in reasons
    )
    flags = buf.db.conn.execute("select flags from readings where meter_id='m2'").fetchone()[0]
    assert flags == "cover_open,magnetic"
    # the same content dropped again (a re-copied file) is recognised and not read twice
    (d / "a.jsonl").write_bytes((d / "done" / "a.jsonl").read_bytes())
    src.poll(NOW)
    assert buf.maintenance.stats().total_readings == 4
    assert len(list((d / "done").iterdir())) == 3


def test_spool_reads_seed_format(tmp_path: Path) -> None:
    buf, src = _spool(tmp_path)
    # the first ten rows of the seed dataset (CC0, shared/data/seed-kaggle), kept with the tests
    seed = Path(__file__).with_name("support") / "seed_sample.csv"
    lines = seed.read_text().splitlines()[:11]
    lines[5] = lines[5].replace(",", ",oops,", 1)  # one corrupted row
    (tmp_path / "spool" / "seed.csv").write_text("\n".join(lines) + "\n")
    src.poll(NOW)
    assert buf.maintenance.stats().total_readings == 9
    (meter,) = {m for (m,) in buf.db.conn.execute("select meter_id from readings")}
    assert meter == "seed-0001"
    # the seed's Timestamp is the interval start: 00:00 → the interval ending 00:30
    assert buf.db.conn.execute("select min(ts) from readings").fetchone()[0] == 1704069000
    ((reason, source),) = buf.db.conn.execute("select reason, source from quarantine").fetchall()
    assert reason.startswith("invalid:") and source.endswith(":6")


def _jsonl(n: int, meters: int = 3) -> str:
    end = int(NOW) // 1800 * 1800  # readings end on their 30-minute grid, before now
    return "".join(
        json.dumps(
            {
                "meter_id": f"m{k % meters}",
                "ts": wire.epoch_iso_z(end - 1800 * (n - k)),
                "kwh": 0.1 + k % 7,
            }
        )
        + "\n"
        for k in range(n)
    )


class _PowerCut(Exception):
    pass


class _CutAfter(Intake):
    """An intake whose process 'dies' right after its ``n``-th commit."""

    def __init__(self, buf: Buffer, n: int) -> None:
        super().__init__(buf.readings, buf.meta, Validator(Clock(NOW)))
        self.left = n

    def take(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super().take(*args, **kwargs)
        self.left -= 1
        if self.left == 0:
            raise _PowerCut
        return result


def test_spool_takes_a_file_a_slice_at_a_time_and_resumes_after_a_cut(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    buf = Buffer(tmp_path / "b.db")
    src = SpoolSource(d, _CutAfter(buf, 3), buf.spool, slice_records=10)
    (d / "big.jsonl").write_text(_jsonl(95) + "not json\n")
    try:
        src.poll(NOW)
    except _PowerCut:
        pass
    assert (
        buf.maintenance.stats().total_readings == 30
    )  # three slices committed, the file still there
    assert buf.db.conn.execute("select outcome, records_done from spool_files").fetchone() == (
        "partial",
        30,
    )
    assert (d / "big.jsonl").exists()
    buf.close()

    buf = Buffer(tmp_path / "b.db")  # the agent starts again
    seq_before = buf.meta.get_int("accept_seq")
    SpoolSource(d, _intake(buf), buf.spool, slice_records=10).poll(NOW)
    assert buf.maintenance.stats().total_readings == 95
    assert (
        buf.meta.get_int("accept_seq") - seq_before == 8
    )  # 66 records in 10-record slices + the closing one
    counters = buf.counters.all()
    assert counters.get("readings_duplicate", 0) == 0, counters  # nothing taken twice
    assert [r for (r,) in buf.db.conn.execute("select reason from quarantine")] == [
        r
        for (r,) in buf.db.conn.execute(
            "select reason from quarantine where reason like 'malformed%'"
        )
    ] and buf.db.conn.execute("select count(*) from quarantine").fetchone() == (1,)
    assert buf.db.conn.execute("select outcome, records_done from spool_files").fetchone() == (
        "done",
        96,
    )
    assert [p.name for p in (d / "done").iterdir()] == ["big.jsonl"]


def test_a_bad_record_in_a_spool_file_costs_that_record_only(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    buf = Buffer(tmp_path / "b.db")
    src = SpoolSource(d, _intake(buf), buf.spool, slice_records=10)
    rows = "".join(
        f"m{k % 3},2026-03-01 {k // 2:02d}:{k % 2 * 30:02d}:00,0.{k % 9 + 1}\n" for k in range(25)
    )
    (d / "torn.csv").write_bytes(f"meter_id,ts,kwh\n{rows}".encode() + b"m1,\xff\xfe,1\nm2,x,1\n")
    # a JSONL file: a line that is not UTF-8 is one quarantined record, the rest goes on
    (d / "line.jsonl").write_bytes(_jsonl(5).encode() + b'{"meter_id": "\xff"}\n' + b"\n")
    src.poll(NOW)
    assert (
        buf.maintenance.stats().total_readings == 30
    )  # none lost: those 25 + 5 were valid readings
    rows_ = buf.db.conn.execute("select reason, raw, source from quarantine order by id")
    got = {(reason.split(":")[0], source.rsplit(":", 1)[-1]) for reason, _, source in rows_}
    # the CSV line that is not UTF-8, the next one (a bad ts), the JSONL line that is not UTF-8
    assert got == {("not_utf8", "27"), ("invalid", "28"), ("malformed_json", "6")}
    raw = [r for (r,) in buf.db.conn.execute("select raw from quarantine where reason='not_utf8'")]
    assert raw == ["m1,\\xff\\xfe,1"]  # the bytes shown, not lost
    assert list((d / "failed").iterdir()) == []
    assert sorted(p.name for p in (d / "done").iterdir()) == ["line.jsonl", "torn.csv"]
    ledger = buf.db.conn.execute("select name, outcome, readings, quarantined from spool_files")
    assert sorted(ledger) == [("line.jsonl", "done", 5, 1), ("torn.csv", "done", 25, 2)]
