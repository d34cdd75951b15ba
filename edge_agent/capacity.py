"""Whether the gateway takes new readings now: the buffer's byte budget and the disk's free space.

A full disk is a state, not a crash. When the buffer's data reaches ``buffer_max_mb``, when the
file system has less than ``disk_reserve_mb`` free, or when SQLite reports ``SQLITE_FULL``, the
gate closes: the agent stops polling its sources, which keep what they hold (spool files stay,
local MQTT messages are not acknowledged, the simulator holds its chunk), while sending,
acknowledgements and pruning go on. The budget leaves headroom for that: the file may grow
``headroom`` past the budget (``max_page_count``) before SQLite refuses even those writes. A
``buffer_full`` or ``disk_full`` alert goes out once per closing, status shows the state, and
the gate opens again on its own once the data is below ``resume_share`` of the budget and the
disk has half the reserve again to spare (hysteresis: no flapping at the edge). A write refused
while the measures said there was room (a file system that reports free space SQLite cannot
have, a reserve of almost nothing) holds the gate closed for ``hold_min_s``, doubled for each
refusal that follows a reopening soon (up to ``hold_max_s``): the gate does not open and close
every turn of the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_agent.alerts import raise_gateway_alert
from edge_agent.buffer import Buffer, BufferFull, DiskFull, FileSpace

log = logging.getLogger(__name__)

IntakeState = Literal["open", "buffer_full", "disk_full"]
MB = 1024 * 1024


@dataclass(frozen=True)
class SpaceLimits:
    budget_bytes: int  # the buffer's data (pages in use) may reach this, then intake stops
    reserve_bytes: int  # intake stops when the file system has less than this free
    headroom_bytes: int = 8 * MB  # past the budget, for batches, acks, alerts and status
    resume_share: float = 0.95
    hold_min_s: float = 5.0  # closed at least this long after a refused write
    hold_max_s: float = 300.0

    @classmethod
    def of(cls, buffer_max_mb: int, disk_reserve_mb: int) -> SpaceLimits:
        budget = buffer_max_mb * MB
        headroom = max(4 * MB, min(64 * MB, budget // 10))
        return cls(budget, disk_reserve_mb * MB, headroom_bytes=headroom)


class IntakeGate:
    """Opens and closes intake by the buffer's space (see the module doc); ``wall`` stamps the
    alerts."""

    def __init__(
        self,
        buffer: Buffer,
        limits: SpaceLimits,
        gateway_id: str,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer = buffer
        self.limits = limits
        self.gateway_id = gateway_id
        self.wall = wall
        self.monotonic = monotonic
        self._hold_s = 0.0  # the current hold after a refused write (0: none yet)
        self._held_until = 0.0
        self._opened_at: float | None = None
        self.state: IntakeState = "open"
        self.space: FileSpace = buffer.db.space()
        self._alert_due: IntakeState | None = None
        self._limit = limits.budget_bytes + limits.headroom_bytes
        buffer.db.limit_size(self._limit)

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def check(self) -> bool:
        """Measure (every turn of the loop: three pragmas and a statvfs, microseconds, so a
        fast source overshoots the budget by one chunk at most), move the state, raise what is
        due; returns whether sources may be polled."""
        self.space = self.buffer.db.space()
        self._move(self._state_for(self.space))
        if self._alert_due is not None:
            self._raise_alert(self._alert_due)
        return self.is_open

    def full(self, exc: BufferFull) -> None:
        """A write was refused for lack of room (``SQLITE_FULL``, or the readings cap): close
        now, whatever the last measure said; the next checks open the gate again once there is
        room. When the file hit its own page limit while the disk has room, the limit grows by
        one headroom: acks must always be recordable, or nothing could ever leave."""
        self.space = self.buffer.db.space()
        state = self._state_for(self.space)
        if state == "open":
            state = "disk_full" if isinstance(exc, DiskFull) else "buffer_full"
        lim = self.limits
        mono = self.monotonic()
        reopened_lately = self._opened_at is not None and mono - self._opened_at < lim.hold_max_s
        self._hold_s = min(lim.hold_max_s, self._hold_s * 2) if reopened_lately else lim.hold_min_s
        self._hold_s = max(self._hold_s, lim.hold_min_s)
        self._held_until = mono + self._hold_s
        at_limit = self.space.size_bytes + lim.headroom_bytes // 4 >= self._limit
        if isinstance(exc, DiskFull) and at_limit:
            if self.space.disk_free_bytes > lim.reserve_bytes + lim.headroom_bytes:
                self._limit += lim.headroom_bytes
                self.buffer.db.limit_size(self._limit)
                log.warning("buffer file at its page limit: limit raised to %d B", self._limit)
        self._move(state, reason=str(exc))

    def _state_for(self, space: FileSpace) -> IntakeState:
        lim = self.limits
        readings = self.buffer.readings
        if self.state == "open":
            if space.disk_free_bytes < lim.reserve_bytes:
                return "disk_full"
            if space.used_bytes >= lim.budget_bytes or self._cap_reached():
                return "buffer_full"
            return "open"
        # closed: open again only with some room to spare, and not within a hold
        if self.monotonic() < self._held_until:
            return self.state
        if space.disk_free_bytes < lim.reserve_bytes * 1.5:
            return "disk_full"
        if space.used_bytes >= lim.budget_bytes * lim.resume_share or (
            readings.cap_policy == "refuse" and readings.pending >= readings.cap * lim.resume_share
        ):
            return "buffer_full"
        return "open"

    def _cap_reached(self) -> bool:
        """The readings cap closes intake only under the ``refuse`` policy (``evict_oldest``
        makes room by evicting)."""
        readings = self.buffer.readings
        return readings.cap_policy == "refuse" and readings.is_full

    @property
    def room_target_bytes(self) -> int:
        """Data size that opens a gate closed by the budget, with a margin."""
        return int(self.limits.budget_bytes * (self.limits.resume_share - 0.05))

    def _move(self, state: IntakeState, reason: str = "") -> None:
        if state == self.state:
            return
        before, self.state = self.state, state
        s = self.space
        figures = (
            f"buffer data {s.used_bytes / MB:.1f} MB of {self.limits.budget_bytes / MB:.0f} MB, "
            f"WAL {s.wal_bytes / MB:.1f} MB, disk free {s.disk_free_bytes / MB:.1f} MB"
        )
        if state == "open":
            self._opened_at = self.monotonic()
            log.info("intake resumed (was %s): %s", before, figures)
            self.buffer.db.count({"intake_resumed": 1})
            return
        log.warning("intake paused: %s (%s)%s", state, figures, f": {reason}" if reason else "")
        self.buffer.db.count({f"intake_paused_{state}": 1})
        self._alert_due = state

    def _raise_alert(self, state: IntakeState) -> None:
        s = self.space
        if raise_gateway_alert(
            self.buffer.alerts,
            gateway_id=self.gateway_id,
            kind=state,
            ts=self.wall(),
            now=self.wall(),
            detail=(
                f"intake paused: buffer data {s.used_bytes} B of {self.limits.budget_bytes} B, "
                f"disk free {s.disk_free_bytes} B (reserve {self.limits.reserve_bytes} B); "
                "readings wait at their sources, sending goes on"
            ),
        ):
            self._alert_due = None
