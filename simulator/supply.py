"""Grid supply per feeder and transformer: load-shedding and unplanned faults.

* Rotating load-shedding by stage (South Africa, Senegal, Cameroon, Benin...): a national stage
  per day (a Markov chain); each feeder belongs to one of ``shedding_groups`` groups; time is cut
  into blocks of ``shedding_block_h`` hours (local) and at stage s a feeder is off in s of every
  ``shedding_groups`` blocks, spread through the day. Stage 4 of 16 groups with 2 h blocks is
  three 2 h cuts a day.
* Guaranteed-hours bands (Nigeria's band A..E): a feeder gets at least its band's hours of
  supply a day; the rest is cut in up to three blocks at random times.
* Unplanned faults on feeders and transformers: Poisson arrivals, lognormal durations (may run
  into the next days).
"""

from __future__ import annotations

from math import gcd

import numpy as np

from . import episodes, rng
from .config import FleetConfig
from .timegrid import LocalDay
from .topology import SCHEME_BANDS, SCHEME_ROTATION, Topology

MAX_FAULT_DAYS = 2


class SupplyModel:
    def __init__(self, cfg: FleetConfig, topo: Topology) -> None:
        self.cfg = cfg
        self.topo = topo
        self.ipd = cfg.intervals_per_day
        self.stages = self._stages()
        groups = cfg.shedding_groups
        self._mult = next(m for m in (5, 7, 3, 11, 13, 1) if gcd(m, groups) == 1)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _stages(self) -> np.ndarray:
        gen = rng.stream(self.cfg.seed, rng.SUPPLY)
        p = np.asarray(self.cfg.stage_probs, np.float64)
        p = p / p.sum()
        stages = np.empty(self.cfg.day_blocks + 1, np.int64)
        stages[0] = gen.choice(len(p), p=p)
        stay = gen.random(len(stages)) < self.cfg.stage_persistence
        jumps = gen.choice(len(p), size=len(stages), p=p)
        for d in range(1, len(stages)):
            stages[d] = stages[d - 1] if stay[d] else jumps[d]
        return np.minimum(stages, self.cfg.shedding_groups)

    def day(self, day: int, local: LocalDay) -> tuple[np.ndarray, np.ndarray]:
        """(feeder_on (intervals, feeders), transformer_on (intervals, transformers))."""
        cached = self._cache.get(day)
        if cached is None:
            cached = self._cache[day] = self._compute(day, local)
            for old in [d for d in list(self._cache) if d < day - 2]:
                self._cache.pop(old, None)
        return cached

    def _compute(self, day: int, local: LocalDay) -> tuple[np.ndarray, np.ndarray]:
        topo, cfg, ipd = self.topo, self.cfg, self.ipd
        n_f, n_x = len(topo.feeder_ids), len(topo.tx_ids)
        off = np.zeros((ipd, n_f), dtype=bool)
        rot = topo.feeder_scheme == SCHEME_ROTATION
        if rot.any() and self.stages[day] > 0:
            block_s = int(round(cfg.shedding_block_h * 3600))
            blocks = local.local_start_s[:, topo.feeder_region[rot]] // block_s
            slot = (blocks * self._mult + topo.feeder_group[rot]) % cfg.shedding_groups
            off[:, rot] = slot < self.stages[day]
        bands = np.flatnonzero(topo.feeder_scheme == SCHEME_BANDS)
        if len(bands):
            off |= self._band_cuts(day, bands, n_f)
        off |= self._faults(day, rng.FAULTS, n_f, cfg.feeder_faults_per_day)
        tx_off = self._faults(day, rng.FAULTS + 100, n_x, cfg.transformer_faults_per_day)
        return ~off, ~tx_off

    def _band_cuts(self, day: int, feeders: np.ndarray, n_units: int) -> np.ndarray:
        gen = rng.stream(self.cfg.seed, rng.SUPPLY, day + 1)
        n = len(feeders)
        min_h = self.topo.feeder_band_min_h[feeders]
        supply_h = gen.uniform(min_h, np.minimum(24.0, min_h + 4.0))
        off_intervals = (24.0 - supply_h) * 3600.0 / self.cfg.interval_s
        cuts = np.sort(gen.random((n, 2)), axis=1)
        parts = np.diff(np.concatenate([np.zeros((n, 1)), cuts, np.ones((n, 1))], axis=1))
        duration = np.round(parts * off_intervals[:, None]).astype(np.int64).ravel()
        start = gen.integers(0, self.ipd, size=3 * n)
        return episodes.mask(n_units, self.ipd, np.repeat(feeders, 3), start, duration)

    def _faults(self, day: int, purpose: int, n_units: int, rate: float) -> np.ndarray:
        units, starts, durations = [], [], []
        median = self.cfg.fault_median_h * 3600.0 / self.cfg.interval_s
        for d in range(max(0, day - MAX_FAULT_DAYS), day + 1):
            gen = rng.stream(self.cfg.seed, purpose, d)
            count = gen.poisson(rate, n_units)
            total = int(count.sum())
            unit = np.repeat(np.arange(n_units), count)
            start = gen.integers(0, self.ipd, total) + (d - day) * self.ipd
            dur = np.ceil(median * np.exp(0.8 * gen.standard_normal(total)))
            dur = np.clip(dur, 1, MAX_FAULT_DAYS * self.ipd).astype(np.int64)
            units.append(unit)
            starts.append(start)
            durations.append(dur)
        return episodes.mask(
            n_units,
            self.ipd,
            np.concatenate(units),
            np.concatenate(starts),
            np.concatenate(durations),
        )
