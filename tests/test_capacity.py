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


def test_an_agent_that_cannot_finish_starting_releases_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the agent starts (here: when the intake gate is made, after the
    local MQTT source connected): the start fails with DiskFull, which `edge-agent run` waits
    out and retries, so nothing of the failed start may stay behind (a second session of the
    source's client id would throw the next one off; an open buffer connection per retry)."""
    import threading

    from edge_agent.agent import Agent
    from tests.support.processes import BROKER_PORT

    settings = AgentSettings(
        gateway_id="gw-half",
        db_path=tmp_path / "b.db",
        source_topic="meters/gw-half/#",
        broker_port=BROKER_PORT,
    )

    def full(*args: object, **kwargs: object) -> None:
        raise DiskFull("database or disk is full")

    with monkeypatch.context() as m:
        m.setattr(IntakeGate, "__init__", full)
        for _ in range(3):
            with pytest.raises(DiskFull):
                Agent(settings)
    source_threads = [t for t in threading.enumerate() if t.name == "mqtt-eiot-source-gw-half"]
    assert source_threads == []
    agent = Agent(settings)  # room again: it starts
    try:
        assert agent.buffer.readings.pending == 0
    finally:
        agent.shutdown()
