"""A small, seeded generator of meter readings with outages, prepaid no-credit periods, gaps and
injected theft, for tests and benchmarks of the detection pipeline (numpy only).

It is deliberately simpler than the project's fleet simulator: it only has to exercise every path
of :mod:`edge_agent.features` and give the model something realistic to separate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.vocabulary import METER_FLAGS

FLAG_NAMES: tuple[str, ...] = METER_FLAGS
FLAG_BITS: dict[str, int] = {name: 1 << i for i, name in enumerate(FLAG_NAMES)}
ATTACKS: tuple[str, ...] = ("bypass", "reduce", "register_rollback", "magnetic")
START_TS = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Readings:
    """Rows grouped by meter and sorted by ts, as :func:`compute_features_grouped` wants."""

    meter_index: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    kwh: npt.NDArray[np.float64]
    supply_on: npt.NDArray[np.bool_]
    flags: npt.NDArray[np.uint16]
    register_kwh: npt.NDArray[np.float64]
    label: npt.NDArray[np.str_]
    interval_s: int

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def meter(self, index: int) -> Readings:
        sel = self.meter_index == index
        return Readings(
            self.meter_index[sel],
            self.ts[sel],
            self.kwh[sel],
            self.supply_on[sel],
            self.flags[sel],
            self.register_kwh[sel],
            self.label[sel],
            self.interval_s,
        )


def _daily_shape(hours: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    morning = np.exp(-0.5 * ((hours - 7.0) / 1.5) ** 2)
    evening = 1.8 * np.exp(-0.5 * ((hours - 20.0) / 2.0) ** 2)
    result: npt.NDArray[np.float64] = 0.35 + morning + evening
    return result


def make_readings(
    n_meters: int,
    days: int,
    *,
    interval_s: int = 1800,
    seed: int = 0,
    attack_fraction: float = 0.0,
    start_ts: int = START_TS,
    min_attack_day: int = 8,
) -> Readings:
    """Readings of ``n_meters`` meters over ``days`` days.

    Meters in ``attack_fraction`` get one theft episode (1-4 days) starting after
    ``min_attack_day`` (so that the features have a clean history first); their rows in the
    episode carry the attack name in ``label``.
    """
    rng = np.random.default_rng(seed)
    per_day = 86400 // interval_s
    n_slots = days * per_day
    interval_h = interval_s / 3600.0
    slot_ts = start_ts + interval_s * np.arange(1, n_slots + 1, dtype=np.int64)
    hours = (((slot_ts - interval_s / 2) % 86400) / 3600.0).astype(np.float64)
    shape = _daily_shape(hours)

    parts: list[tuple[np.ndarray, ...]] = []
    for m in range(n_meters):
        base_kw = rng.lognormal(np.log(0.25), 0.6)
        phase = rng.normal(0.0, 1.0)  # people live at slightly different hours
        shifted = _daily_shape(np.mod(hours + phase, 24.0)) if abs(phase) > 0.05 else shape
        true_kwh = base_kw * shifted * interval_h * rng.lognormal(0.0, 0.3, n_slots)
        on = np.ones(n_slots, dtype=np.bool_)
        flags = np.zeros(n_slots, dtype=np.uint16)
        # Load-shedding: most days one block of 2-6 hours.
        for d in range(days):
            if rng.random() < 0.6:
                s = d * per_day + int(rng.integers(0, per_day))
                on[s : s + int(rng.integers(2, 7) * per_day // 24)] = False
        # Prepaid meters run out of credit now and then.
        if rng.random() < 0.4:
            for _ in range(int(rng.integers(0, 3))):
                s = int(rng.integers(0, n_slots))
                flags[s : s + int(rng.integers(per_day // 4, 2 * per_day))] |= FLAG_BITS[
                    "no_credit"
                ]
        off = ~on | ((flags & FLAG_BITS["no_credit"]) != 0)
        true_kwh[off] = 0.0
        reported = true_kwh.copy()
        label = np.full(n_slots, "", dtype=object)
        register = np.cumsum(true_kwh) + rng.uniform(100, 5000)
        rollback = 0.0

        if rng.random() < attack_fraction and days > min_attack_day + 1:
            kind = ATTACKS[int(rng.integers(0, len(ATTACKS)))]
            s = int(rng.integers(min_attack_day * per_day, n_slots - per_day))
            e = min(n_slots, s + int(rng.integers(1, 5)) * per_day)
            episode = slice(s, e)
            if kind == "bypass":
                reported[episode] = 0.0
            elif kind == "reduce":
                reported[episode] *= 0.3
            elif kind == "magnetic":
                reported[episode] *= 0.5
                hit = np.flatnonzero(rng.random(e - s) < 0.3) + s
                flags[hit] |= FLAG_BITS["magnetic"]
            else:
                rollback = float(rng.uniform(50, 500))
                flags[s] |= FLAG_BITS["cover_open"]
                reported[episode] *= 0.6
            label[episode] = kind
            # The meter's register follows what it measured (minus any rollback).
            register = np.cumsum(reported) + register[0] - true_kwh[0] + reported[0]
            if rollback:
                register[s:] -= rollback
        register = np.round(register, 2)
        reg = np.where(rng.random(n_slots) < 0.05, np.nan, register)

        keep = rng.random(n_slots) >= 0.01  # lost readings
        for _ in range(int(rng.integers(0, 3))):  # communication gaps of a few hours
            s = int(rng.integers(0, n_slots))
            keep[s : s + int(rng.integers(2, 12))] = False
        parts.append(
            (
                np.full(int(keep.sum()), m, dtype=np.int64),
                slot_ts[keep],
                np.round(reported[keep], 4),
                on[keep],
                flags[keep],
                reg[keep],
                label[keep].astype(str),
            )
        )
    cols = [np.concatenate([p[i] for p in parts]) for i in range(7)]
    return Readings(
        meter_index=cols[0].astype(np.int64),
        ts=cols[1].astype(np.int64),
        kwh=cols[2].astype(np.float64),
        supply_on=cols[3].astype(np.bool_),
        flags=cols[4].astype(np.uint16),
        register_kwh=cols[5].astype(np.float64),
        label=cols[6].astype(np.str_),
        interval_s=interval_s,
    )
