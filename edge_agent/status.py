"""``status.v1``: what a field engineer or the control room needs to know about a gateway."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from edge_agent import __version__, wire
from edge_agent.buffer import Buffer
from edge_agent.capacity import IntakeGate
from edge_agent.clock import ClockWatch


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def build(
    buffer: Buffer,
    gateway_id: str,
    now: float,
    state: Literal["online", "offline"] = "online",
    models: list[wire.ModelState] | None = None,
    model_error: str | None = None,
    gate: IntakeGate | None = None,
    watch: ClockWatch | None = None,
    timezone: str | None = None,
) -> wire.Status:
    """``models``: every model in use; ``model`` in the message is the first of them (the
    global one when it is loaded: :meth:`ModelManager.states` sorts it first), for readers that
    show one model. (``status.v1`` readers refuse unknown fields: central is upgraded first.)"""
    stats = buffer.maintenance.stats()
    return wire.Status(
        gateway_id=gateway_id,
        state=state,
        sent_at=datetime.fromtimestamp(now, UTC),
        agent_version=__version__,
        buffer=wire.BufferState(
            pending_readings=stats.pending_readings,
            inflight_batches=stats.inflight_batches,
            total_readings=stats.total_readings,
            oldest_pending_ts=_utc(stats.oldest_pending_ts),
            full=buffer.readings.is_full if gate is None else not gate.is_open,
            **({} if gate is None else _space(gate)),
        ),
        last_ack_at=_utc(stats.last_ack_at),
        counters=buffer.counters.all(),
        model=models[0] if models else None,
        models=models or None,
        model_error=model_error,
        clock_suspect=None if watch is None else watch.suspect,
        clock_last_step_s=None if watch is None or not watch.last_jump_s else watch.last_jump_s,
        timezone=timezone,
    )


def _space(gate: IntakeGate) -> dict[str, object]:
    s = gate.space
    return {
        "intake": gate.state,
        "data_bytes": s.used_bytes,
        "budget_bytes": gate.limits.budget_bytes,
        "wal_bytes": s.wal_bytes,
        "disk_free_bytes": s.disk_free_bytes,
    }


def offline(gateway_id: str, now: float) -> wire.Status:
    """The last will: published by the broker when the agent vanishes."""
    return wire.Status(
        gateway_id=gateway_id, state="offline", sent_at=datetime.fromtimestamp(now, UTC)
    )
