"""Local time for features: UTC offsets of instants in an IANA time zone (stdlib zoneinfo).

Time-of-day and calendar-day features read a meter's local clock: "evening" is 17-23 h where
the customer lives, and a region with daylight saving time changes its offset twice a year.
Readings carry UTC epoch seconds; :func:`utc_offsets` gives, for each of them, the offset the
zone had at that instant, which the feature code adds before it takes the time of day.

Only the standard library and numpy: the zone database is the system's (``/usr/share/zoneinfo``,
Debian's ``tzdata``), read once per zone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:  # numpy is imported where offsets are computed: settings need only names
    import numpy as np
    import numpy.typing as npt

#: The zone of a gateway that was not told its own.
DEFAULT_ZONE = "UTC"
#: What an IANA zone name looks like ("Africa/Lagos", "Etc/GMT+1"): checked before the zone
#: database is asked, and by the wire (``status.v1``) where no database is at hand.
ZONE_PATTERN = r"^[A-Za-z0-9_+\-]{1,32}(/[A-Za-z0-9_+\-]{1,32}){0,2}$"
# Offsets are looked up once per bucket of this many seconds: every zone's transitions fall on
# a quarter hour, so all instants of a bucket share one offset.
_BUCKET_S = 900
# Spans up to this many buckets (about 200 days) are looked up bucket by bucket; longer ones
# only at the buckets that hold a reading.
_RANGE_BUCKETS = 20_000
_FIRST_S = int(datetime(1, 1, 2, tzinfo=UTC).timestamp())
_LAST_S = int(datetime(9999, 12, 30, tzinfo=UTC).timestamp())


class UnknownZoneError(ValueError):
    """Not an IANA time zone name this machine's zone database knows."""


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (``"Africa/Lagos"``); :class:`UnknownZoneError` otherwise."""
    try:
        if not re.fullmatch(ZONE_PATTERN, name):
            raise ValueError("not a zone name")
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "Africa" is a directory
        raise UnknownZoneError(
            f"unknown time zone {name!r}: use an IANA name such as 'Africa/Lagos' "
            "(the system's zone database, package tzdata, must be installed)"
        ) from exc


def check_zone(name: str) -> str:
    """``name`` if it is a known zone (for settings validators)."""
    zone(name)
    return name


def utc_offsets(ts: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    """UTC offset in seconds of zone ``name`` at each epoch second of ``ts`` (DST-aware)."""
    import numpy as np

    t = np.asarray(ts, dtype=np.int64)
    tz = zone(name)
    if name == "UTC" or t.size == 0:
        return np.zeros(t.shape, dtype=np.int64)
    bucket = t // _BUCKET_S
    first, last = int(bucket.min()), int(bucket.max())
    if last - first < _RANGE_BUCKETS:  # a week or a season of readings: every bucket, no sort
        found = np.array(
            [_offset(tz, b * _BUCKET_S) for b in range(first, last + 1)], dtype=np.int64
        )
        result: npt.NDArray[np.int64] = found[bucket - first]
        return result
    buckets, where = np.unique(bucket, return_inverse=True)
    found = np.array([_offset(tz, int(b) * _BUCKET_S) for b in buckets.tolist()], np.int64)
    result = found[where.reshape(t.shape)]
    return result


def _offset(tz: ZoneInfo, epoch_s: int) -> int:
    # an instant outside datetime's years 1..9999 (a corrupt timestamp) takes the offset at the
    # nearest one it can represent, rather than failing the whole call
    epoch_s = min(max(epoch_s, _FIRST_S), _LAST_S)
    delta = datetime.fromtimestamp(epoch_s, UTC).astimezone(tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def zone_offsets(
    ts: npt.ArrayLike, codes: npt.ArrayLike, zone_of_code: Sequence[str]
) -> npt.NDArray[np.int64]:
    """:func:`utc_offsets` for rows of many meters: row ``i`` belongs to meter ``codes[i]``,
    whose zone is ``zone_of_code[codes[i]]`` (integer codes: no string per row)."""
    import numpy as np

    t = np.asarray(ts, dtype=np.int64)
    c = np.asarray(codes, dtype=np.int64)
    if c.shape != t.shape:
        raise ValueError(f"codes have shape {c.shape}, expected {t.shape}")
    names = sorted(set(zone_of_code))
    if len(names) == 1:
        return utc_offsets(t, names[0])
    index = {name: k for k, name in enumerate(names)}
    row_zone = np.array([index[z] for z in zone_of_code], dtype=np.int64)[c]
    out = np.zeros(t.shape, dtype=np.int64)
    for k, name in enumerate(names):
        rows = row_zone == k
        if rows.any():
            out[rows] = utc_offsets(t[rows], name)
    return out


class MeterClocks:
    """Which zone each meter's features use: the registry's zone for that meter, else the
    gateway's own (a gateway whose meters span two zones names them in its registry)."""

    def __init__(self, default: str = DEFAULT_ZONE, per_meter: Mapping[str, str] | None = None):
        self.default = check_zone(default)
        self.per_meter = {m: check_zone(z) for m, z in (per_meter or {}).items()}

    def zone_of(self, meter_id: str) -> str:
        return self.per_meter.get(meter_id, self.default)

    def offsets(
        self, meter_ids: Sequence[str], codes: npt.ArrayLike, ts: npt.ArrayLike
    ) -> npt.NDArray[np.int64]:
        """UTC offset of each row, the row's meter being ``meter_ids[codes[i]]``."""
        return zone_offsets(ts, codes, [self.zone_of(m) for m in meter_ids])
