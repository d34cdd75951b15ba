"""Technical losses of a distribution transformer and its low-voltage network.

loss = delivered * min(base + slope * utilisation, loss_max), utilisation = kW / (kVA * pf):
a few % on a lightly loaded transformer, ~10-15 % on an overloaded one (copper losses grow with
load). ``base`` stands for the no-load and fixed LV-network losses.
"""

from __future__ import annotations

import numpy as np

from .topology import POWER_FACTOR


def utilisation(delivered_kwh: np.ndarray, rated_kva: np.ndarray, interval_s: int) -> np.ndarray:
    return delivered_kwh / (interval_s / 3600.0) / (rated_kva * POWER_FACTOR)


def technical_loss(
    delivered_kwh: np.ndarray,
    util: np.ndarray,
    base: np.ndarray,
    slope: np.ndarray,
    loss_max: float,
) -> np.ndarray:
    return delivered_kwh * np.minimum(base + slope * util, loss_max)
