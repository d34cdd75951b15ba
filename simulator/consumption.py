"""True consumption per customer and interval: class shapes x level x weather x noise.

A meter's energy in an interval is

    (level * (1 - c) * w[class, daytype, hour] * season + level * c * o[class, hour] * duty / ref)
    * day_noise * interval_noise * dt_h

with ``w`` the class's hourly shape (a weekday sums to 24 h of energy), ``c`` its cooling
share, ``o`` its cooling hours, ``duty`` the weather's cooling duty and ``ref`` its climatological
mean, so a meter's mean daily energy is ``level`` over a year.
"""

from __future__ import annotations

import numpy as np

from .config import ClassSpec, FleetConfig
from .timegrid import SATURDAY, SUNDAY, LocalDay
from .weather import TWO_PI, YEAR

LIGHTING_SEASON_AMP = 0.05  # lighting load follows the length of the night
# Bursty homes: appliances per meter, the power of each against the meter's mean draw, the
# largest step of an appliance's latent state per interval (smaller: longer runs), and the
# standby share of the energy that stays on all the time.
APPLIANCES = 2
APPLIANCE_POWER = (3.0, 8.0)
APPLIANCE_STEP = 0.08
STANDBY_SHARE = 0.03
# Commercial profiles: their noise, against the class's.
SMOOTH_NOISE = 0.3


def class_weights(spec: ClassSpec) -> np.ndarray:
    """(3 daytypes, 24) hourly energy shares; a weekday sums to 1."""
    weekday = np.asarray(spec.weekday, np.float64)
    weekday = weekday / weekday.sum()
    a, b, boost = spec.weekend_boost
    weekend = weekday.copy()
    weekend[a:b] *= boost
    weekend /= weekend.sum()
    out = np.empty((3, 24))
    out[0] = weekday
    out[SATURDAY] = weekend * spec.saturday_level
    out[SUNDAY] = weekend * spec.sunday_level
    return out


def cooling_weights(spec: ClassSpec) -> np.ndarray:
    a, b = spec.cooling_hours
    occ = np.zeros(24)
    occ[a:b] = 1.0
    return occ / max(occ.sum(), 1.0)


class ConsumptionModel:
    def __init__(self, cfg: FleetConfig, duty_ref: np.ndarray) -> None:
        self.cfg = cfg
        self.n_classes = len(cfg.classes)
        self.weights = np.stack([class_weights(c) for c in cfg.classes])  # (C, 3, 24)
        self.cool = np.stack([cooling_weights(c) for c in cfg.classes])  # (C, 24)
        self.cooling_share = np.array([c.cooling_share for c in cfg.classes])
        smooth = SMOOTH_NOISE if cfg.load_style == "commercial" else 1.0
        self.noise_sigma = smooth * np.array([c.noise_sigma for c in cfg.classes])
        self.day_sigma = smooth * np.array([c.day_sigma for c in cfg.classes])
        self.duty_ref = duty_ref
        # Night length peaks at the winter solstice: late December north, late June south.
        self.winter_doy = np.array([355.0 if r.latitude >= 0 else 172.0 for r in cfg.region_specs])

    def key(self, region: np.ndarray, klass: np.ndarray) -> np.ndarray:
        return region * self.n_classes + klass

    def tables(self, local: LocalDay, duty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-interval energy share for one kWh/day of level: (intervals, regions * classes)
        for the base load and for the cooling load."""
        dt_h = self.cfg.interval_s / 3600.0
        hour, daytype = local.hour, local.daytype
        season = 1.0 + LIGHTING_SEASON_AMP * np.cos(TWO_PI * (local.doy - self.winter_doy) / YEAR)
        base = self.weights[:, daytype, hour] * (season * dt_h)[None]  # (C, T, R)
        cool = self.cool[:, hour] * (duty / self.duty_ref * dt_h)[None]  # (C, T, R)
        n_t = hour.shape[0]
        return (
            np.ascontiguousarray(base.transpose(1, 2, 0)).reshape(n_t, -1),
            np.ascontiguousarray(cool.transpose(1, 2, 0)).reshape(n_t, -1),
        )

    def energy(
        self,
        gen: np.random.Generator,
        key: np.ndarray,
        klass: np.ndarray,
        level: np.ndarray,
        base_tab: np.ndarray,
        cool_tab: np.ndarray,
    ) -> np.ndarray:
        """True energy (intervals, meters) before supply and credit cuts."""
        share = self.cooling_share[klass]
        sigma = self.noise_sigma[klass].astype(np.float32)
        day_sigma = self.day_sigma[klass]
        n_t, n = base_tab.shape[0], len(key)
        day_factor = np.exp(day_sigma * gen.standard_normal(n) - 0.5 * day_sigma**2)
        z = gen.standard_normal((n_t, n), dtype=np.float32)
        z *= sigma
        z -= 0.5 * sigma**2
        noise = np.exp(z, out=z)
        x = np.take(base_tab, key, axis=1)
        x *= level * (1.0 - share) * day_factor
        if share.any():
            x += np.take(cool_tab, key, axis=1) * (level * share * day_factor)
        x *= noise
        if self.cfg.load_style == "bursty":
            return self._appliances(gen, x, level)
        return x

    def _appliances(self, gen: np.random.Generator, x: np.ndarray, level: np.ndarray) -> np.ndarray:
        """The same expected energy as ``x`` (intervals, meters), drawn by ``APPLIANCES``
        appliances per meter: each of a fixed power (a few times the meter's mean draw) and
        on in an interval with the probability that keeps the expectation, its state
        persistent from one interval to the next, over a small standby load. An appliance is
        on while its latent ``u`` lies below that probability; ``u`` wanders slowly around the
        unit circle (steps of at most ``APPLIANCE_STEP``), so it stays uniform and the expected
        energy is exact, and on and off come in runs."""
        n_t, n = x.shape
        mean_iv = np.maximum(level * (self.cfg.interval_s / 86400.0), 1e-6)  # kWh, mean interval
        out = STANDBY_SHARE * x
        share = (1.0 - STANDBY_SHARE) / APPLIANCES
        lo, hi = APPLIANCE_POWER
        for _ in range(APPLIANCES):
            power = mean_iv * (lo + (hi - lo) * gen.random(n))  # kWh per interval when on
            on_p = np.minimum(share * x / power, 1.0)
            steps = APPLIANCE_STEP * (2.0 * gen.random((n_t, n)) - 1.0)
            steps[0] = gen.random(n)
            u = np.cumsum(steps, axis=0) % 1.0
            out += np.where(u < on_p, power, 0.0)
        return out
