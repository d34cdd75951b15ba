from __future__ import annotations

import json
from pathlib import Path

from edge_agent.buffer import Buffer
from edge_agent.sources import Intake
from edge_agent.sources.spool import SpoolSource
from edge_agent.validate import Validator, split
from edge_agent.wire import QuarantineRecord
from tests.helpers import Clock

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
    return buf, SpoolSource(tmp_path / "spool", Intake(buf, Validator(Clock(NOW))))


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
    assert buf.stats().total_readings == 4
    reasons = sorted(r for (r,) in buf.conn.execute("select reason from quarantine"))
    assert len(reasons) == 3 and any(
        r.startswith("unreadable_file: unknown CSV header") for r in reasons
    )
    flags = buf.conn.execute("select flags from readings where meter_id='m2'").fetchone()[0]
    assert flags == "cover_open,magnetic"
    # the same content dropped again (a re-copied file) is recognised and not read twice
    (d / "a.jsonl").write_bytes((d / "done" / "a.jsonl").read_bytes())
    src.poll(NOW)
    assert buf.stats().total_readings == 4
    assert len(list((d / "done").iterdir())) == 3


def test_spool_reads_seed_format(tmp_path: Path) -> None:
    buf, src = _spool(tmp_path)
    seed = Path(__file__).resolve().parents[2] / "shared/data/seed-kaggle/smart_meter_data.csv"
    lines = seed.read_text().splitlines()[:11]
    lines[5] = lines[5].replace(",", ",oops,", 1)  # one corrupted row
    (tmp_path / "spool" / "seed.csv").write_text("\n".join(lines) + "\n")
    src.poll(NOW)
    assert buf.stats().total_readings == 9
    (meter,) = {m for (m,) in buf.conn.execute("select meter_id from readings")}
    assert meter == "seed-0001"
    # the seed's Timestamp is the interval start: 00:00 → the interval ending 00:30
    assert buf.conn.execute("select min(ts) from readings").fetchone()[0] == 1704069000
    ((reason, source),) = buf.conn.execute("select reason, source from quarantine").fetchall()
    assert reason.startswith("invalid:") and source.endswith(":6")
