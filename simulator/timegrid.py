"""The time axis: UTC day blocks of ``intervals_per_day`` intervals, seen in each region's clock.

``ts`` is the END of an interval (``docs/contracts.md``). Hour-of-day, weekday and season of an
interval are taken at its START in the region's local time, so the 17:00-17:30 interval is in
hour 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from .config import FleetConfig

WEEKDAY, SATURDAY, SUNDAY = 0, 1, 2  # SUNDAY also stands for public holidays
EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class LocalDay:
    """One UTC day block seen from every region: arrays of shape (intervals, regions)."""

    local_start_s: np.ndarray  # int64 local seconds since epoch at each interval start
    hour: np.ndarray  # int64 0..23
    daytype: np.ndarray  # int8 WEEKDAY / SATURDAY / SUNDAY
    doy: np.ndarray  # float64 day of year (1..366) with fraction


class TimeGrid:
    def __init__(self, cfg: FleetConfig) -> None:
        self.interval_s = cfg.interval_s
        self.ipd = cfg.intervals_per_day
        self.days = cfg.day_blocks
        self._total = cfg.total_intervals
        self.start_epoch = cfg.start_epoch
        self.offsets_s = np.array([r.utc_offset_s for r in cfg.region_specs], np.int64)
        self._recurring: set[tuple[int, int]] = set()
        self._dates: set[date] = set()
        for text in cfg.holidays:
            if len(text) == 5:
                month, day = (int(p) for p in text.split("-"))
                date(2024, month, day)  # validates (2024 is a leap year)
                self._recurring.add((month, day))
            else:
                self._dates.add(date.fromisoformat(text))

    @property
    def total_intervals(self) -> int:
        return self._total

    def ends(self, day: int) -> np.ndarray:
        """Epoch seconds (UTC) of the END of each interval of day block ``day``."""
        base = self.start_epoch + day * 86400
        return base + self.interval_s * np.arange(1, self.ipd + 1, dtype=np.int64)

    def is_holiday(self, d: date) -> bool:
        return d in self._dates or (d.month, d.day) in self._recurring

    def local(self, day: int) -> LocalDay:
        starts = self.ends(day) - self.interval_s
        local = starts[:, None] + self.offsets_s[None, :]
        local_day = local // 86400
        hour = (local % 86400) // 3600
        daytype = np.empty(local.shape, np.int8)
        doy = np.empty(local.shape, np.float64)
        for value in np.unique(local_day):
            d = EPOCH + timedelta(days=int(value))
            weekday = d.weekday()
            kind = (
                SUNDAY
                if weekday == 6 or self.is_holiday(d)
                else (SATURDAY if weekday == 5 else WEEKDAY)
            )
            sel = local_day == value
            daytype[sel] = kind
            doy[sel] = d.timetuple().tm_yday
        doy += (local % 86400) / 86400.0
        return LocalDay(local_start_s=local, hour=hour, daytype=daytype, doy=doy)
