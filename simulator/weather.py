"""Weather per region and interval: temperature, humidity and wind, as in the seed dataset.

Climatology (season + day cycle) plus a day-to-day AR(1) anomaly, interpolated between days so
series are smooth across day blocks, plus a little interval noise. Also the cooling "duty"
(0..1) that drives air-conditioning and fan load.
"""

from __future__ import annotations

import numpy as np

from . import rng
from .config import FleetConfig
from .timegrid import LocalDay, TimeGrid

TWO_PI = 2.0 * np.pi
YEAR = 365.25
AR_PHI = 0.7


def cooling_duty(temp_c: np.ndarray, humidity_pct: np.ndarray) -> np.ndarray:
    """Share of cooling capacity running: 0 below 24 C apparent, 1 from 34 C."""
    apparent = temp_c + 0.08 * (humidity_pct - 50.0)
    return np.clip((apparent - 24.0) / 10.0, 0.0, 1.0)


class Weather:
    def __init__(self, cfg: FleetConfig, grid: TimeGrid) -> None:
        self.cfg = cfg
        self.grid = grid
        regions = cfg.region_specs
        self._tm = np.array([r.temp_mean_c for r in regions])
        self._ts = np.array([r.temp_season_amp_c for r in regions])
        self._tp = np.array([r.temp_peak_doy for r in regions], np.float64)
        self._td = np.array([r.temp_diurnal_amp_c for r in regions])
        self._hm = np.array([r.humidity_mean_pct for r in regions])
        self._hs = np.array([r.humidity_season_amp_pct for r in regions])
        self._hp = np.array([r.humidity_peak_doy for r in regions], np.float64)
        self._wm = np.array([r.wind_mean_ms for r in regions])
        n_regions = len(regions)
        # Daily anomalies for days -1 .. days (anchored at local noon), AR(1).
        gen = rng.stream(cfg.seed, rng.WEATHER)
        n = cfg.day_blocks + 2
        innov = gen.standard_normal((n, 3, n_regions)) * np.array([0.9, 5.0, 0.25])[None, :, None]
        anom = np.empty_like(innov)
        anom[0] = innov[0] / np.sqrt(1 - AR_PHI**2)
        for i in range(1, n):
            anom[i] = AR_PHI * anom[i - 1] + innov[i]
        self._anom = anom
        # Reference duty: the region's mean over a climatological year (no anomalies).
        doy = np.repeat(np.arange(1, 366, dtype=np.float64), 24)[:, None]
        hour = np.tile(np.arange(24, dtype=np.float64) + 0.5, 365)[:, None]
        temp, hum = self._climate(doy, hour)
        self.duty_ref = np.maximum(cooling_duty(temp, hum).mean(axis=0), 0.05)

    def _climate(self, doy: np.ndarray, hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        diurnal = self._td * np.cos(TWO_PI * (hour - 15.0) / 24.0)
        temp = self._tm + self._ts * np.cos(TWO_PI * (doy - self._tp) / YEAR) + diurnal
        hum = self._hm + self._hs * np.cos(TWO_PI * (doy - self._hp) / YEAR) - 2.5 * diurnal
        return temp, hum

    def day(self, day: int, local: LocalDay) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(temperature_c, humidity_pct, wind_ms), each of shape (intervals, regions)."""
        half = self.grid.interval_s / 2.0
        hour = ((local.local_start_s % 86400) + half) / 3600.0
        # Position in anomaly days: index 1 is local noon of day block 0.
        pos = (
            local.local_start_s
            + half
            - self.grid.start_epoch
            - self.grid.offsets_s[None, :]
            - 43200.0
        ) / 86400.0 + 1.0
        pos = np.clip(pos, 0.0, self._anom.shape[0] - 1.000001)
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        cols = np.arange(pos.shape[1])[None, :]
        a = (
            self._anom[i0, :, cols] * (1 - frac)[..., None]
            + self._anom[i0 + 1, :, cols] * frac[..., None]
        )
        gen = rng.stream(self.cfg.seed, rng.WEATHER, day + 1)
        noise = gen.standard_normal((3, *pos.shape))
        temp, hum = self._climate(local.doy, hour)
        temp = temp + a[..., 0] + 0.3 * noise[0]
        hum = np.clip(hum + a[..., 1] + 2.0 * noise[1], 5.0, 100.0)
        wind = (
            self._wm
            * (1.0 + 0.35 * np.cos(TWO_PI * (hour - 14.0) / 24.0))
            * np.exp(a[..., 2] + 0.15 * noise[2] - 0.5 * 0.25**2)
        )
        return np.round(temp, 2), np.round(hum, 1), np.round(np.maximum(wind, 0.0), 2)
