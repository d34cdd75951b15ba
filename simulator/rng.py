"""Deterministic random streams: one independent generator per (seed, purpose, keys).

Streams are keyed by what they describe (the day, the gateway), never by the order in which
they are used, so the data do not depend on how they are read (chunk sizes, gateway order).
"""

from __future__ import annotations

import numpy as np

TOPOLOGY = 1
WEATHER = 2
SUPPLY = 3
FAULTS = 4
CREDIT = 5
CONSUMPTION = 6
THEFT_PLAN = 7
THEFT_DAY = 8
VOLTAGE = 9
UNMETERED = 10


def stream(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))
