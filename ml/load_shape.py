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

``python -m ml load-shapes`` takes the decision centrally over months of ``raw.readings`` (in the
database: one row per meter comes back) and compares it with each customer meter's pinned
``raw.meters.load_shape``: ``set`` (none pinned yet), ``keep``, ``review`` (the pinned shape
differs) or ``wait`` (too few valid readings). It only proposes: it writes nothing in ``raw``
(the ml role reads raw, it never writes it); whoever keeps the registry pins the shapes, and the
gateways' registry files carry them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.feature_spec import NO_CREDIT_FLAG
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


def classify(
    share: npt.NDArray[np.float64], valid_days: npt.NDArray[np.float64]
) -> npt.NDArray[np.str_]:
    """The shape of meters with this near-zero ``share`` over ``valid_days`` days' worth of
    valid readings."""
    enough = valid_days >= MIN_DAYS
    inter = enough & (np.nan_to_num(share, nan=0.0) > INTERMITTENT_SHARE)
    return np.where(inter, INTERMITTENT, CONTINUOUS)


def decide(
    kwh: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], intervals_per_day: int
) -> npt.NDArray[np.str_]:
    """Each meter's load shape from its readings ``(T, M)`` and which of them are valid."""
    return classify(near_zero_share(kwh, valid), valid.sum(axis=0) / intervals_per_day)


#: :func:`near_zero_share` in the database, per meter, over the valid readings of one interval
#: length in a window (``tests/test_ml_registry.py`` compares the two).
_SHARES_SQL = """
with valid as (
    select meter_id, kwh from raw.readings
    where ts > %(start)s and ts <= %(end)s and interval_s = %(interval_s)s
      and supply = 'on' and not (%(no_credit)s = any(flags))
), level as (
    select meter_id, avg(kwh) as mean, count(*) as n from valid group by meter_id
)
select l.meter_id, l.n, (count(*) filter (where v.kwh < %(near)s * l.mean))::float8 / l.n
from valid v join level l using (meter_id)
group by l.meter_id, l.n
"""


@dataclass(frozen=True)
class Proposal:
    """What the readings say of one customer meter's shape, against the pinned one."""

    meter_id: str
    pinned: str | None  # raw.meters.load_shape
    decided: str
    near_zero_share: float | None
    valid_days: float

    @property
    def action(self) -> str:
        """``wait`` (too few valid readings to decide), ``set`` (nothing pinned), ``keep`` (the
        same) or ``review`` (the readings disagree with the pinned shape: a thief zeroing
        readings looks intermittent)."""
        if self.valid_days < MIN_DAYS:
            return "wait"
        if self.pinned is None:
            return "set"
        return "keep" if self.pinned == self.decided else "review"

    def as_row(self) -> dict[str, Any]:
        """The proposal as ``--out`` writes it, and ``central registry pin-shapes`` reads it."""
        return {**dataclasses.asdict(self), "action": self.action}


def propose(conn: Any, start: datetime, end: datetime, interval_s: int = 1800) -> list[Proposal]:
    """Every registered customer meter's proposal from its readings in ``(start, end]``."""
    shares = {
        str(meter): (int(n), float(share))
        for meter, n, share in conn.execute(
            _SHARES_SQL,
            {
                "start": start,
                "end": end,
                "interval_s": interval_s,
                "no_credit": NO_CREDIT_FLAG,
                "near": NEAR_ZERO_OF_MEAN,
            },
        )
    }
    meters = conn.execute(
        "select meter_id, load_shape from raw.meters where meter_role = 'customer'"
        " order by meter_id"
    ).fetchall()
    n = np.array([shares.get(m, (0, np.nan))[0] for m, _ in meters], dtype=np.float64)
    share = np.array([shares.get(m, (0, np.nan))[1] for m, _ in meters], dtype=np.float64)
    days = n * interval_s / 86400
    decided = classify(share, days)
    return [
        Proposal(
            str(m),
            pinned,
            str(decided[i]),
            None if np.isnan(share[i]) else round(float(share[i]), 4),
            round(float(days[i]), 2),
        )
        for i, (m, pinned) in enumerate(meters)
    ]
