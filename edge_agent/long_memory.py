"""A meter's long memory: its usual power at each local hour, over months (numpy only).

The features look back 7 days, so a theft that starts one day and stays becomes the meter's new
normal within a week. The profile remembers longer: per meter and local hour of day, an
exponentially weighted mean of the power of the meter's valid readings (supply on, credit left),
with a time constant of :data:`TAU_DAYS` (a day that old weighs 1/e of yesterday). A local day is
folded in once the meter has a reading of a later day, and a row is compared with the profile as
it stood at the end of the day before its own: a day's readings never move their own reference.
The feature ``mean_24h_vs_usual`` reads the profile's level (the weighted mean over all hours).
The profile is kept per hour all the same: it takes months to build on thousands of gateways, and
a later model that compares hour by hour (``kwh_vs_usual_hour`` was evaluated and lost, see
``docs/detection.md``) or an hour-matched level must not wait for it to be learnt again.

Training folds each meter's whole history from its first day. The gateway keeps each meter's
profile in its buffer (:class:`~edge_agent.feature_spec.MeterProfile`: 384 bytes of numbers) and
folds the days its history holds after the stored ``through_day``. Both run the same float
operations in the same order, so a gateway that saw every reading as it came has the reference
training computes, bit for bit. Two differences remain, both rare: a reading that arrives after
its day was folded is not folded (the day is closed), and a gateway that had no model while
readings came in (it then computes no features) folds only the week of history it still holds
when a model arrives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.feature_spec import PROFILE_HOURS, MeterProfile, slots_per_day
from edge_agent.vocabulary import MIN_INTERVAL_S, WIRE_MAX_KW

#: Time constant of the profile's exponential weights, in days.
TAU_DAYS = 60.0
#: Weight left to yesterday's profile when a day is folded in.
DECAY = math.exp(-1.0 / TAU_DAYS)
#: Days of readings the profile's level needs before it is used.
MIN_DAYS = 3
#: A stored profile this many days older than the readings is dropped (it weighs e^-3, 5 %).
MAX_GAP_DAYS = 180
#: ... and one this many days ahead of them too: it folded readings of a clock that ran ahead,
#: and would otherwise keep every later day from being folded until that date.
MAX_AHEAD_DAYS = 30
# Day rows (meters x days) folded at once: bounds the temporary memory (~800 bytes each).
_CHUNK_DAYS = 1 << 13
#: Readings are summed as whole micro-kWh: exact sums, whatever their order.
QUANTUM_PER_KWH = 1_000_000
_DAY2 = 2 * 86400  # seconds in a day, doubled: midpoints are computed in half-seconds
_HOUR2 = 2 * 3600
_F8 = np.dtype("<f8")
# The most an hour of a profile can weigh: readings of the shortest interval (5 min), twice for
# the hour a clock change repeats, on every day, each day decayed.
_MAX_WEIGHT = 2 * (3600 // MIN_INTERVAL_S) / (1 - DECAY)

FloatArray = npt.NDArray[np.float64]


@dataclass
class Usual:
    """What the long memory says about each row: the meter's usual level (kW, the weighted mean
    of its profile's hours), NaN where it knows too little; and each meter's profile after
    folding every day before its newest (by meter code, only those that changed)."""

    level_kw: FloatArray
    profiles: dict[int, MeterProfile] = field(default_factory=dict)


def local_day_and_hour(
    ts: npt.ArrayLike, interval_s: int, utc_offset_s: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Local calendar day (days since 1970-01-01) and hour of each interval's midpoint."""
    mid2 = (
        2 * np.asarray(ts, dtype=np.int64)
        - int(interval_s)
        + 2 * np.asarray(utc_offset_s, dtype=np.int64)
    )
    return mid2 // _DAY2, (mid2 % _DAY2) // _HOUR2


def fold(
    meter: npt.ArrayLike,
    ts: npt.ArrayLike,
    kwh: npt.ArrayLike,
    valid: npt.ArrayLike,
    utc_offset_s: npt.ArrayLike,
    interval_s: int,
    start: Mapping[int, MeterProfile] | None = None,
) -> Usual:
    """The long memory of rows grouped by ``meter`` (contiguous) and sorted by ``ts`` inside
    each meter; ``start`` holds the profiles already folded (by meter code; none: each meter
    starts with its first day here)."""
    meter_a = np.asarray(meter)
    ts_a = np.asarray(ts, dtype=np.int64)
    n = ts_a.shape[0]
    out = Usual(np.full(n, np.nan))
    if n == 0:
        return out
    kwh_a = np.asarray(kwh, dtype=np.float64)
    ok = np.asarray(valid, dtype=np.bool_) & np.isfinite(kwh_a) & (kwh_a >= 0)
    q = np.rint(np.where(ok, kwh_a, 0.0) * QUANTUM_PER_KWH)
    offsets = np.broadcast_to(np.asarray(utc_offset_s, dtype=np.int64), (n,))
    day, hour = local_day_and_hour(ts_a, interval_s, offsets)

    starts = np.flatnonzero(np.r_[True, meter_a[1:] != meter_a[:-1]])
    ends = np.r_[starts[1:], n]
    codes = meter_a[starts]
    m_n = starts.shape[0]
    last = np.maximum.reduceat(day, starts)
    first_day = np.minimum.reduceat(day, starts)
    begin = first_day.copy()  # first day each meter folds
    s0 = np.zeros((m_n, PROFILE_HOURS))
    w0 = np.zeros((m_n, PROFILE_HOURS))
    for i, code in enumerate(codes.tolist()):
        p = start.get(code) if start else None
        if p is None or not last[i] - MAX_GAP_DAYS <= p.through_day <= last[i] + MAX_AHEAD_DAYS:
            continue
        sums, weights = np.frombuffer(p.sums, _F8), np.frombuffer(p.weights, _F8)
        if not _plausible(sums, weights):
            continue  # damaged (a flipped bit on the SD card): it would weigh for years
        begin[i] = p.through_day + 1
        s0[i] = sums
        w0[i] = weights
    days = np.maximum(last - begin + 1, 0)  # day rows of each meter: begin .. last

    min_level = (MIN_DAYS - 0.5) * slots_per_day(interval_s)
    to_kw = 3600.0 / (int(interval_s) * QUANTUM_PER_KWH)

    a = 0
    while a < m_n:
        # Whole meters while the chunk stays under the day-row budget (at least one meter).
        cum = np.cumsum(days[a:])
        b = a + max(1, int(np.searchsorted(cum, _CHUNK_DAYS, side="right")))
        _fold_chunk(
            slice(starts[a], ends[b - 1]),
            np.repeat(np.arange(b - a), ends[a:b] - starts[a:b]),
            day,
            hour,
            q,
            ok,
            begin[a:b],
            days[a:b],
            last[a:b],
            s0[a:b],
            w0[a:b],
            codes[a:b],
            (to_kw, min_level),
            out,
        )
        a = b
    return out


def _plausible(sums: FloatArray, weights: FloatArray) -> bool:
    """Whether a stored profile's numbers can be what folding gives: finite, not negative, no
    hour weighing more than its readings can (the shortest interval's, twice for the hour a
    clock change repeats, summed over every past day), no mean power above the wire's limit."""
    with np.errstate(invalid="ignore"):
        return bool(
            np.all((weights >= 0) & (weights <= _MAX_WEIGHT))
            and np.all((sums >= 0) & (sums <= WIRE_MAX_KW * weights * (1 + 1e-9)))
        )


def _fold_chunk(
    rows: slice,
    pos: npt.NDArray[np.int64],
    day: npt.NDArray[np.int64],
    hour: npt.NDArray[np.int64],
    q: FloatArray,
    ok: npt.NDArray[np.bool_],
    begin: npt.NDArray[np.int64],
    days: npt.NDArray[np.int64],
    last: npt.NDArray[np.int64],
    s: FloatArray,
    w: FloatArray,
    codes: npt.NDArray[np.generic],
    limits: tuple[float, float],
    out: Usual,
) -> None:
    to_kw, min_level = limits
    base = np.r_[0, np.cumsum(days)[:-1]]  # first day row of each meter
    total = int(days.sum())
    e = day[rows] - begin[pos]  # day row of each row within its meter, < 0: already folded
    fresh = e >= 0
    f = np.where(fresh, base[pos] + e, 0)
    h = hour[rows]
    cell = f * PROFILE_HOURS + h
    size = total * PROFILE_HOURS
    use = fresh & ok[rows]
    # Exact integer sums of micro-kWh, then one scaling: the same whatever the rows' order.
    x_s = np.bincount(cell[use], weights=q[rows][use], minlength=size) * to_kw
    x_s = x_s.reshape(-1, PROFILE_HOURS)
    x_w = np.bincount(cell[use], minlength=size).astype(np.float64).reshape(-1, PROFILE_HOURS)
    # ref[f] = the profile at the end of the day before day row f.
    ref_s = np.empty((total, PROFILE_HOURS))
    ref_w = np.empty((total, PROFILE_HOURS))
    s_start, w_start = s, w
    s = s.copy()
    w = w.copy()
    for k in range(int(days.max(initial=0))):
        act = np.flatnonzero(days > k)
        ref_s[base[act] + k] = s[act]
        ref_w[base[act] + k] = w[act]
        upd = act[days[act] - 1 > k]  # the newest day is not folded: it is still open
        fu = base[upd] + k
        s[upd] = DECAY * s[upd] + x_s[fu]
        w[upd] = DECAY * w[upd] + x_w[fu]
    code_list = codes.tolist()
    for i in np.flatnonzero(days >= 2).tolist():
        out.profiles[code_list[i]] = MeterProfile(
            int(last[i]) - 1, s[i].astype(_F8).tobytes(), w[i].astype(_F8).tobytes()
        )
    # Per row: its day row's reference, or the stored profile for a day already folded.
    if total:
        ls = np.where(fresh, ref_s.sum(axis=1)[f], s_start.sum(axis=1)[pos])
        lw = np.where(fresh, ref_w.sum(axis=1)[f], w_start.sum(axis=1)[pos])
    else:
        ls, lw = s_start.sum(axis=1)[pos], w_start.sum(axis=1)[pos]
    out.level_kw[rows] = np.where(lw >= min_level, ls / np.maximum(lw, 1e-300), np.nan)
