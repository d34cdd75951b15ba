"""Which customer meters are *intermittent*: mostly near zero, with blocks at an appliance's power
(many lifeline homes), as opposed to *continuous* load that never quite stops (``LOAD_SHAPES``).

A forest fitted on continuous meters finds an intermittent meter's long zero stretches anomalous,
and one fitted on both finds zeroed or scaled readings normal; forests per shape see each clearly
(``ml.modelset``). The shape is decided centrally from a meter's history, over weeks, and then
pinned in the meter's registry entry: it is never taken from the readings being scored, because
a thief who zeroes readings would then choose the forest that judges them. A meter's reading
counts as near zero below :data:`NEAR_ZERO_OF_MEAN` of the meter's mean over its valid readings
(supply on, credit left); a meter is intermittent when more than :data:`INTERMITTENT_SHARE` of
its valid readings are near zero, decided from at least :data:`MIN_DAYS` days' worth of valid
readings (weeks of calendar where the grid is shed for most of the day).
A decision that would move a meter *into* the intermittent group later is one to review (an
inspection, a changed installation), not one to apply quietly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.registry import CONTINUOUS, INTERMITTENT

#: A reading below this share of the meter's mean counts as near zero.
NEAR_ZERO_OF_MEAN = 0.05
#: A meter with more than this share of near-zero valid readings is intermittent.
INTERMITTENT_SHARE = 0.30
#: Days' worth of valid readings a decision needs; with fewer, a meter stays continuous.
MIN_DAYS = 7


def near_zero_share(
    kwh: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Per meter (columns of ``(T, M)`` arrays), the share of its valid readings below
    :data:`NEAR_ZERO_OF_MEAN` of its mean valid reading; NaN for a meter without one."""
    n = valid.sum(axis=0)
    used = np.where(valid, kwh, 0.0)
    mean = used.sum(axis=0) / np.maximum(n, 1)
    near = (valid & (kwh < NEAR_ZERO_OF_MEAN * mean[None, :])).sum(axis=0)
    share: npt.NDArray[np.float64] = np.where(n > 0, near / np.maximum(n, 1), np.nan)
    return share


def decide(
    kwh: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], intervals_per_day: int
) -> npt.NDArray[np.str_]:
    """Each meter's load shape from its readings ``(T, M)`` and which of them are valid."""
    share = near_zero_share(kwh, valid)
    enough = valid.sum(axis=0) >= MIN_DAYS * intervals_per_day
    inter = enough & (np.nan_to_num(share, nan=0.0) > INTERMITTENT_SHARE)
    return np.where(inter, INTERMITTENT, CONTINUOUS)
