"""The gateway's two clocks: the wall clock stamps, the monotonic clock times.

A Raspberry-Pi-class gateway has no battery-backed clock: after a power cut it boots with the
time it saved at shutdown (or 1970) until NTP steps it, and NTP may step it again later. Every
interval the agent waits for (ack timeouts, batch age, status, pruning, resends) is therefore
measured on the monotonic clock, which never steps; the wall clock only stamps.

:class:`ClockWatch` compares the two every turn of the loop: when ``wall - monotonic`` moves by
more than ``jump_s`` the wall clock was stepped. It also keeps a high-water mark of the wall
clock in the buffer (written every minute): a wall clock behind it is wrong (time does not go
back), which catches a clock that was reset while the agent was not running. The mark never
falls below :data:`CLOCK_FLOOR` (a card that has never seen a time, booting in 1970, is wrong
too). The mark rises only with a clock that has run ``settle_s`` without a step, and within one
run no faster than the monotonic clock: a clock stepped a year ahead that later comes back does
not leave a mark a year ahead (which would make the right time look wrong for a year).
``edge-agent clock reset`` clears a mark that is wrong anyway.

While the clock is suspect (behind the mark, or within ``settle_s`` of a step) the agent says so
in its status and raises one ``clock_suspect`` alert; readings are judged against the later of
the wall clock and the time the clock had before it was doubted, carried on by the monotonic
clock (:meth:`ClockWatch.latest_now`): a clock stepped back cannot quarantine real-time readings
as ``ts_in_future``, and a reading half a year ahead of both is still refused. A clock behind
the mark at start has no such reference (the mark only says how early the time cannot be):
until it is trusted, future readings are left to central's check. Pruning waits for
the clock to be trusted (``edge_agent.agent``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.alerts import raise_gateway_alert
from edge_agent.buffer import Buffer, BufferFull

log = logging.getLogger(__name__)

HIGH_WATER_KEY = "clock_high_water"
# 2026-01-01T00:00:00Z, before this agent version existed: no correct clock reads earlier.
CLOCK_FLOOR = 1_767_225_600.0


@dataclass(frozen=True)
class ClockPolicy:
    jump_s: float = 120.0  # a step of the wall clock larger than this is a jump
    settle_s: float = (
        600.0  # suspect for this long after a jump; stable this long to raise the mark
    )
    save_every_s: float = 60.0  # the high-water mark is written this often


class ClockWatch:
    def __init__(
        self,
        buffer: Buffer,
        gateway_id: str,
        policy: ClockPolicy = ClockPolicy(),
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer = buffer
        self.gateway_id = gateway_id
        self.policy = policy
        self.wall = wall
        self.monotonic = monotonic
        mono = monotonic()
        self._offset = wall() - mono
        self._suspect_until: float | None = None
        self._stable_from = mono  # the mark rises only after settle_s without a step
        # (mark, monotonic) when this run first set the mark: it rises no faster from there
        self._anchor: tuple[float, float] | None = None
        self._saved_at: float | None = None
        self._alert_due = False
        self.last_jump_s = 0.0  # the size of the last step seen (+ ahead, − back)
        self.high_water = _stored_mark(buffer)
        # wall - monotonic as it was while the clock was trusted: the time it would show now
        # had it not been stepped. None at a start behind the mark: the mark says only how early
        # the time cannot be (a power cut may have lasted a week).
        self._trusted_offset: float | None = self._offset
        if self.behind():
            self._trusted_offset = None
            self._alert_due = True
            log.warning(
                "the wall clock (%s) is %.0f s behind the latest time this gateway has seen",
                _iso(wall()),
                self.mark - wall(),
            )

    @property
    def mark(self) -> float:
        """The wall clock cannot be earlier than this (the high-water mark, or the floor)."""
        return max(self.high_water, CLOCK_FLOOR)

    def behind(self) -> bool:
        return self.wall() < self.mark - self.policy.jump_s

    @property
    def suspect(self) -> bool:
        settling = self._suspect_until is not None and self.monotonic() < self._suspect_until
        return settling or self.behind()

    @property
    def trusted(self) -> bool:
        return not self.suspect

    def latest_now(self) -> float:
        """The latest the time can be now: the wall clock; while it is suspect the later of it
        and the time it had before it was doubted, carried on by the monotonic clock; no limit
        when it was never trusted in this run (the readings go to central's check)."""
        wall = self.wall()
        if self.trusted:
            return wall
        if self._trusted_offset is None:
            return math.inf
        return max(wall, self._trusted_offset + self.monotonic())

    def check(self) -> None:
        """Once per turn of the loop: detect a step, keep the high-water mark, raise what is
        due. Cheap: two clock reads, and a write a minute."""
        mono = self.monotonic()
        offset = self.wall() - mono
        step = offset - self._offset
        if abs(step) > self.policy.jump_s:
            self._offset = offset
            self.last_jump_s = step
            self._suspect_until = mono + self.policy.settle_s
            self._stable_from = mono
            self._alert_due = True
            log.warning("the wall clock stepped by %+.0f s (now %s)", step, _iso(self.wall()))
            self.buffer.db.count({"clock_jumps": 1})
        else:
            self._offset = offset  # follow NTP's slewing
            if self.trusted:
                self._trusted_offset = offset
        if self._saved_at is None or mono - self._saved_at >= self.policy.save_every_s:
            self._saved_at = mono
            self._save_high_water(mono)
        if self._alert_due:
            self._raise_alert()

    def _save_high_water(self, mono: float) -> None:
        stored = _stored_mark(self.buffer)
        if stored < self.high_water:  # cleared by `edge-agent clock reset`
            log.warning("the clock's high-water mark was reset")
            self.high_water, self._anchor, self._trusted_offset = stored, None, self._offset
        if self.suspect or mono - self._stable_from < self.policy.settle_s:
            return  # a suspect or just-stepped clock never raises the mark
        mark = self.wall()
        if self._anchor is not None:  # no faster than the monotonic clock within a run
            mark = min(mark, self._anchor[0] + (mono - self._anchor[1]) + self.policy.jump_s)
        if mark <= self.high_water:
            return
        try:
            with self.buffer.db.transaction():
                self.buffer.meta.set(HIGH_WATER_KEY, f"{mark:.0f}")
        except BufferFull:
            return
        self.high_water = mark
        if self._anchor is None:
            self._anchor = (mark, mono)

    def _raise_alert(self) -> None:
        wall = self.wall()
        if raise_gateway_alert(
            self.buffer.alerts,
            gateway_id=self.gateway_id,
            kind="clock_suspect",
            ts=max(wall, self.mark),
            now=wall,
            detail=(
                f"wall clock {_iso(wall)}; last step {self.last_jump_s:+.0f} s; latest time "
                f"seen {_iso(self.mark)}; timers run on the monotonic clock, readings are "
                "judged against the time before the doubt"
            ),
        ):
            self._alert_due = False


def reset_high_water(buffer: Buffer) -> float:
    """Forget the high-water mark (a clock that was wrong raised it); returns the old one. A
    running agent picks the reset up within a minute and takes its current clock as right."""
    old = _stored_mark(buffer)
    with buffer.db.transaction():
        buffer.meta.set(HIGH_WATER_KEY, "0")
    return old


def _stored_mark(buffer: Buffer) -> float:
    return float(buffer.meta.get(HIGH_WATER_KEY) or 0.0)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
