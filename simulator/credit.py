"""Prepaid credit: a prepaid meter runs out of credit, its relay opens, and it reads zero until
the customer buys a token (a legitimate zero, flagged ``no_credit``)."""

from __future__ import annotations

import numpy as np

from . import episodes, rng
from .config import FleetConfig

MAX_GAP_DAYS = 3


class CreditModel:
    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.ipd = cfg.intervals_per_day

    def day(
        self, day: int, gateway: int, p_start: np.ndarray, median_intervals: np.ndarray
    ) -> np.ndarray:
        """(intervals, meters) True while the meter has no credit. ``p_start`` is each meter's
        daily chance to run out (0 for postpaid meters)."""
        n = len(p_start)
        units, starts, durations = [], [], []
        for d in range(max(0, day - MAX_GAP_DAYS), day + 1):
            gen = rng.stream(self.cfg.seed, rng.CREDIT, d, gateway)
            begins = gen.random(n) < p_start
            start = gen.integers(0, self.ipd, n)
            z = gen.standard_normal(n)
            idx = np.flatnonzero(begins)
            dur = np.ceil(median_intervals[idx] * np.exp(0.9 * z[idx]))
            units.append(idx)
            starts.append(start[idx] + (d - day) * self.ipd)
            durations.append(np.clip(dur, 1, MAX_GAP_DAYS * self.ipd).astype(np.int64))
        return episodes.mask(
            n, self.ipd, np.concatenate(units), np.concatenate(starts), np.concatenate(durations)
        )
