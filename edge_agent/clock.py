"""The gateway's two clocks: the wall clock stamps, the monotonic clock times.

A Raspberry-Pi-class gateway has no battery-backed clock: after a power cut it boots with the
time it saved at shutdown (or 1970) until NTP steps it, and NTP may step it again later. Every
interval the agent waits for (ack timeouts, batch age, status, pruning, resends) is therefore
measured on the monotonic clock, which never steps; the wall clock only stamps.

:class:`ClockWatch` compares the two every turn of the loop: when ``wall - monotonic`` moves by
more than ``jump_s`` the wall clock was stepped. It also keeps a high-water mark of the wall
clock in the buffer (written every minute): a wall clock behind it is wrong (time does not go
back), which catches a clock that was reset while the agent was not running. While the clock is
suspect (behind the mark, or within ``settle_s`` of a step) the agent says so in its status,
raises one ``clock_suspect`` alert, does not quarantine readings as ``ts_in_future`` by its own
clock (central checks them against its own), and does not prune.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.alerts import raise_gateway_alert
from edge_agent.buffer import Buffer, BufferFull

log = logging.getLogger(__name__)

HIGH_WATER_KEY = "clock_high_water"


@dataclass(frozen=True)
class ClockPolicy:
    jump_s: float = 120.0  # a step of the wall clock larger than this is a jump
    settle_s: float = 600.0  # suspect for this long after a jump
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
        self._offset = wall() - monotonic()
        self._suspect_until: float | None = None
        self._saved_at: float | None = None
        self._alert_due = False
        self.last_jump_s = 0.0  # the size of the last step seen (+ ahead, − back)
        self.high_water = float(buffer.meta.get(HIGH_WATER_KEY) or 0.0)
        if self.behind():
            self._alert_due = True
            log.warning(
                "the wall clock (%s) is %.0f s behind the latest time this gateway has seen",
                _iso(wall()),
                self.high_water - wall(),
            )

    def behind(self) -> bool:
        return self.wall() < self.high_water - self.policy.jump_s

    @property
    def suspect(self) -> bool:
        settling = self._suspect_until is not None and self.monotonic() < self._suspect_until
        return settling or self.behind()

    @property
    def trusted(self) -> bool:
        return not self.suspect

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
            self._alert_due = True
            log.warning("the wall clock stepped by %+.0f s (now %s)", step, _iso(self.wall()))
            self.buffer.db.count({"clock_jumps": 1})
        else:
            self._offset = offset  # follow NTP's slewing
        if self._saved_at is None or mono - self._saved_at >= self.policy.save_every_s:
            self._saved_at = mono
            self._save_high_water()
        if self._alert_due:
            self._raise_alert()

    def _save_high_water(self) -> None:
        now = self.wall()
        if self.suspect or now <= self.high_water:
            return  # a suspect clock never raises the mark
        try:
            with self.buffer.db.transaction():
                self.buffer.meta.set(HIGH_WATER_KEY, f"{now:.0f}")
        except BufferFull:
            return
        self.high_water = now

    def _raise_alert(self) -> None:
        wall = self.wall()
        if raise_gateway_alert(
            self.buffer.alerts,
            gateway_id=self.gateway_id,
            kind="clock_suspect",
            ts=max(wall, self.high_water),
            now=wall,
            detail=(
                f"wall clock {_iso(wall)}; last step {self.last_jump_s:+.0f} s; latest time "
                f"seen {_iso(self.high_water) if self.high_water else 'none'}; timers run on "
                "the monotonic clock, future readings are left to central's check"
            ),
        ):
            self._alert_due = False


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
