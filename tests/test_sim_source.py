"""The simulated fleet as an agent source: garbled readings (a bad field day) are quarantined
with the validator's reasons, the same ones however often a chunk is read, and taken through the
real buffer."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from edge_agent.buffer import Buffer
from edge_agent.settings import SimSourceSettings
from edge_agent.sources import Intake
from edge_agent.sources.sim import SimSource, make_fleet
from edge_agent.validate import Validator
from edge_agent.wire import QuarantineRecord


def _source(tmp_path: Path, name: str, **settings: float) -> tuple[Buffer, SimSource]:
    buffer = Buffer(tmp_path / f"{name}.db")
    intake = Intake(buffer.readings, buffer.meta, Validator(time.time))
    sim = SimSourceSettings(meters=40, days=2, seed=5, chunk_intervals=48, **settings)
    return buffer, SimSource(sim, intake)


def _what(row: object) -> object:
    """A row, or a quarantine record's input and reason (not when it was made)."""
    return (row.raw, row.reason) if isinstance(row, QuarantineRecord) else row


def _reasons(rows: list[object]) -> list[str]:
    return [r.reason for r in rows if isinstance(r, QuarantineRecord)]


def test_garbled_readings_are_quarantined_with_their_reasons_the_same_every_time(
    tmp_path: Path,
) -> None:
    _, clean = _source(tmp_path, "clean")
    _, noisy = _source(tmp_path, "noisy", garbled_share=0.05)
    chunk = next(noisy._chunks)
    assert _reasons(clean.rows(chunk)) == []  # the simulator's own readings are all valid
    first, again = noisy.rows(chunk), noisy.rows(chunk)
    reasons = _reasons(first)
    assert [_what(r) for r in first] == [_what(r) for r in again], "a resumed agent's are the same"
    # about 5 % of the chunk's readings, every way of garbling seen, each with its reason
    assert 0.03 * len(chunk) <= len(reasons) <= 0.07 * len(chunk), (len(reasons), len(chunk))
    kinds = Counter(r.split(":")[0] for r in reasons)
    assert set(kinds) == {"invalid", "ts_in_future"}, kinds
    assert any("kwh" in r and "greater than or equal to 0" in r for r in reasons), reasons[:5]
    assert any("kwh" in r and "above" in r for r in reasons), reasons[:5]
    assert len(first) == len(chunk), "a garbled reading is replaced, not dropped"


def test_the_agent_buffer_keeps_the_quarantined_garble(tmp_path: Path) -> None:
    buffer, noisy = _source(tmp_path, "agent", garbled_share=0.01)
    while noisy.poll(time.time()):
        pass
    readings = buffer.db.conn.execute("select count(*) from readings").fetchone()[0]
    quarantined = buffer.db.conn.execute("select count(*) from quarantine").fetchone()[0]
    offered = sum(len(c) for c in make_fleet(noisy.settings).chunks(0, chunk_intervals=48))
    assert readings + quarantined == offered
    assert 0 < quarantined < 0.03 * offered
