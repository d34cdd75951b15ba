"""The names and windows of the gateway's features, without numpy.

What the agent needs to know about the features (their names, the meter flags they read, how
much history they need) without importing numpy when no model is loaded: about 14 MB of RSS on
a gateway. ``edge_agent.features`` computes the features and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.vocabulary import (
    MAX_INTERVAL_S,
    METER_FLAGS,
    MIN_INTERVAL_S,
    NO_CREDIT_FLAG,
    TAMPER_FLAGS,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_FLAG_BITS",
    "FEATURE_NAMES",
    "PROFILE_HOURS",
    "MeterProfile",
    "NO_CREDIT_FLAG",
    "TAMPER_FLAGS",
    "flag_bits_from_names",
    "history_window_s",
    "slots_per_day",
    "supplied",
]

FEATURE_NAMES: tuple[str, ...] = (
    "hour_sin",  # hour of day of the interval midpoint, local time (UTC + utc_offset_s)
    "hour_cos",
    "kwh_vs_same_hour_7d",  # log ratio: kwh vs mean of the same time of day over the last 7 days
    "kwh_vs_24h",  # log ratio: kwh vs mean of the previous 24 h
    "kwh_vs_7d",  # log ratio: kwh vs mean of the previous 7 days
    "zero_run_log_h",  # log1p(hours of consecutive zero readings, supply on and credit left)
    "rough_24h",  # median |log(kwh_t / kwh_t-1)| of adjacent non-zero readings, last 24 h
    "flatness_24h",  # std / mean of the readings of the last 24 h
    "day_spread_6d",  # std of log(daily mean) over the six previous local days
    "register_mismatch",  # signed log1p(|register delta - sum kwh| / level)
    "register_drop",  # log1p(register decrease / level)
    "tamper_24h_log",  # log1p(number of readings with a tamper flag in the last 24 h)
    "log_level_7d",  # log of the mean power (kW) of the valid readings of the previous 7 days
    "evening_share_7d",  # share of the last 7 days' valid energy in 17-23 h (local)
    "night_level_7d",  # log of the mean power (kW) of the last 7 days' valid readings in 23-05 h
    "today_vs_best_6d",  # log of today's mean so far vs the best of the same hours, 6 days
    # log ratio: mean of the last 24 h vs the meter's long-memory level (edge_agent.long_memory,
    # months), so a step down stays visible after the week the other features see
    "mean_24h_vs_usual",
)

#: Local hours of day a meter's long-memory profile holds.
PROFILE_HOURS = 24


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """A meter's long memory as the gateway keeps it between intake calls (its ``meter_profiles``
    row): per local hour, the decayed sum of the power (kW) of its valid readings and the decayed
    count of those readings, each ``PROFILE_HOURS`` float64 little-endian, after folding in
    every local day up to ``through_day`` (days since 1970-01-01 on the meter's local clock).
    Bytes, not arrays: the buffer stores it without numpy."""

    through_day: int
    sums: bytes
    weights: bytes

    def __post_init__(self) -> None:
        for name in ("sums", "weights"):
            if len(getattr(self, name)) != 8 * PROFILE_HOURS:
                raise ValueError(f"MeterProfile.{name} must be {8 * PROFILE_HOURS} bytes")


def supplied(
    supply_on: npt.NDArray[np.bool_], flags: npt.NDArray[np.integer], no_credit_mask: int
) -> npt.NDArray[np.bool_]:
    """Which readings were taken with the supply on and credit left (no ``no_credit`` bit in
    their flag mask): the only ones the features and the long memory learn from, in training
    and on the gateway alike. Elementwise over arrays; a reading must also hold a finite,
    non-negative ``kwh``, which each consumer checks against its own copy of the values."""
    import numpy as np  # only ever called with arrays: numpy is loaded by then

    bits = np.asarray(flags)
    if bits.dtype.kind == "i":  # the same bits unsigned: a sign bit must not spread upwards
        bits = bits.view(f"u{bits.dtype.itemsize}")
    bits = bits.astype(np.int64, copy=False)
    result: npt.NDArray[np.bool_] = np.asarray(supply_on, dtype=np.bool_) & (
        (bits & no_credit_mask) == 0
    )
    return result


_LOOKBACK_DAYS = 7


def flag_bits_from_names(names: Iterable[str]) -> dict[str, int]:
    """``{name: 1 << position}`` for a bitmask whose bit *i* is ``names[i]``."""
    return {name: 1 << i for i, name in enumerate(names)}


#: The bit layout of flag masks (``vocabulary.METER_FLAGS`` order), for agents that hold flags
#: as strings (``Reading.flags``).
DEFAULT_FLAG_BITS: dict[str, int] = flag_bits_from_names(METER_FLAGS)


def slots_per_day(interval_s: int) -> int:
    _check_interval(interval_s)
    return max(1, round(86400 / interval_s))


def _same_hour_half_width(interval_s: int) -> int:
    """Neighbouring slots (each side) that count as "the same hour" on earlier days."""
    per_hour = 3600 // interval_s
    return max(0, (per_hour - 1) // 2)


def _history_slots(interval_s: int) -> int:
    return _LOOKBACK_DAYS * slots_per_day(interval_s) + _same_hour_half_width(interval_s)


def history_window_s(interval_s: int) -> int:
    """Seconds of history before a reading that its features depend on.

    Pass every reading with ``ts >= first_ts_to_score - history_window_s(interval_s)``; older
    readings never change the result.
    """
    return _history_slots(interval_s) * interval_s


def _check_interval(interval_s: int) -> None:
    if not MIN_INTERVAL_S <= int(interval_s) <= MAX_INTERVAL_S:
        raise ValueError(
            f"interval_s must be in {MIN_INTERVAL_S}..{MAX_INTERVAL_S}, got {interval_s}"
        )
