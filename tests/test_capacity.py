"""The intake gate on its own (edge_agent/capacity.py), on a real buffer: a write refused while
the measures say there is room holds intake closed, longer each time it comes back soon, so the
gate does not open and close every turn of the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.buffer import Buffer, DiskFull
from edge_agent.capacity import IntakeGate, SpaceLimits
from edge_agent.settings import AgentSettings
from tests.support.builders import Clock


def test_a_refused_write_holds_intake_closed_with_a_growing_hold(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db")
    mono = Clock(0.0)
    limits = SpaceLimits.of(buffer_max_mb=64, disk_reserve_mb=1)
    gate = IntakeGate(buffer, limits, "gw", wall=Clock(), monotonic=mono)
    assert gate.check()  # an empty buffer on a disk with room
    holds = []
    for _ in range(5):
        gate.full(DiskFull("database or disk is full"))  # what the measures did not see
        closed_from = mono()
        while not gate.check():  # the loop's turns, 20 ms apart
            mono.advance(0.02)
        holds.append(round(mono() - closed_from))
    assert holds == [5, 10, 20, 40, 80], holds
    counters = buffer.counters.all()
    assert counters["intake_paused_disk_full"] == 5 and counters["intake_resumed"] == 5
    mono.advance(limits.hold_max_s + 1)  # open long enough: the next refusal starts afresh
    gate.full(DiskFull("database or disk is full"))
    mono.advance(limits.hold_min_s + 0.01)
    assert gate.check()
    # one disk_full alert per kind and hour, not one per closing
    assert buffer.alerts.undelivered() == 1


def test_no_reserve_at_all_is_refused() -> None:
    with pytest.raises(ValidationError, match="disk_reserve_mb"):
        AgentSettings(gateway_id="gw", disk_reserve_mb=0)
