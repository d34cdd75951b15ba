"""Turn episodes (unit, start interval, duration) into a boolean (intervals, units) mask."""

from __future__ import annotations

import numpy as np


def mask(
    n_units: int, n_intervals: int, unit: np.ndarray, start: np.ndarray, duration: np.ndarray
) -> np.ndarray:
    """True where some episode covers (interval, unit). Starts may be negative (episodes that
    began on an earlier day) and ends may run past the day: both are clipped."""
    out = np.zeros((n_intervals, n_units), dtype=bool)
    lo = np.clip(np.asarray(start, np.int64), 0, n_intervals)
    hi = np.clip(np.asarray(start, np.int64) + duration, 0, n_intervals)
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    if total:
        first = np.cumsum(lengths) - lengths
        t = np.repeat(lo - first, lengths) + np.arange(total)
        out[t, np.repeat(np.asarray(unit, np.int64), lengths)] = True
    return out
