"""Exponential backoff with full jitter (AWS architecture blog's "full jitter" variant).

Many gateways come back at once after a load-shedding block ends; jitter spreads their reconnects
so the broker is not hit by a thundering herd.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError("need 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The next wait: uniform in [min_s, min(max_s, min_s * 2**attempt)]."""
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(self.min_s, ceiling)

    def reset(self) -> None:
        self.attempt = 0
