"""Simple reading-level detectors to compare the model with. They see only ``kwh`` and which
readings to use (``ml.evaluate`` runs each twice: on every present reading, like the seed project,
and on the valid ones, told about outages and prepaid credit) and work on ``(T, M)`` arrays of
``per_day`` intervals a day; scores are higher = more suspicious.

* **Seed ratio rule** (the seed project's rule): ``ratio = kwh / rolling mean of kwh`` over the
  last 10 intervals *including* the current one (the seed's ``Avg_Past_Consumption`` window,
  ``min_periods=1``); a reading is flagged when ``ratio < 0.5``. Score: ``-ratio``. A window
  with no energy at all gives ratio 1 (no evidence).
* **Rolling z-score**: ``z = (kwh - mean) / std`` over the previous 24 h (current reading
  excluded, at least a quarter of the window present); flagged when ``z < -3``. Score: ``-z``
  (one-sided: theft lowers consumption; this favours the baseline on theft).
* **Same-hour drop** (the obvious rule an analyst tries first): the drop of a reading against
  the meter's own mean at the same time of day over the previous ``SAME_HOUR_DAYS`` days,
  ``log((m + e) / (kwh + e))`` with ``e`` a tenth of the meter's overall mean over those days
  (at least ``SAME_HOUR_MIN`` earlier readings at that time of day, else 0); flagged when the
  reading is under half that mean. Its memory (four weeks) outlives the model's 7-day features.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SEED_RATIO_WINDOW = 10
SEED_RATIO_CUT = 0.5
ZSCORE_CUT = 3.0
SAME_HOUR_DAYS = 28
SAME_HOUR_MIN = 3
SAME_HOUR_CUT = float(np.log(2.0))  # under half of the same-hour mean

FloatArray = npt.NDArray[np.float64]


def _trailing_sums(values: FloatArray, window: int, include_current: bool) -> FloatArray:
    """Sum over the ``window`` rows ending at (or just before) each row, along axis 0."""
    c = np.zeros((values.shape[0] + 1, *values.shape[1:]))
    np.cumsum(values, axis=0, out=c[1:])
    idx = np.arange(values.shape[0])
    hi = idx + 1 if include_current else idx
    lo = np.maximum(hi - window, 0)
    result: FloatArray = c[hi] - c[lo]
    return result


def seed_ratio(
    kwh: npt.ArrayLike, present: npt.ArrayLike, window: int = SEED_RATIO_WINDOW
) -> FloatArray:
    """``kwh / rolling mean`` per reading (see module docstring), ``(T, M)``."""
    x = np.asarray(kwh, dtype=np.float64)
    p = np.asarray(present, dtype=np.bool_)
    xv = np.where(p, x, 0.0)
    s = _trailing_sums(xv, window, True)
    n = _trailing_sums(p.astype(np.float64), window, True)
    mean = s / np.maximum(n, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mean > 0, xv / mean, 1.0)
    result: FloatArray = np.where(p, ratio, 1.0)
    return result


def seed_ratio_score(kwh: npt.ArrayLike, present: npt.ArrayLike, per_day: int) -> FloatArray:
    result: FloatArray = -seed_ratio(kwh, present)
    return result


def rolling_zscore(
    kwh: npt.ArrayLike,
    present: npt.ArrayLike,
    window: int = 48,
    min_count: int | None = None,
) -> FloatArray:
    """``(kwh - trailing mean) / trailing std`` per reading; 0 without enough history."""
    x = np.asarray(kwh, dtype=np.float64)
    p = np.asarray(present, dtype=np.bool_)
    need = max(2, window // 4) if min_count is None else min_count
    xv = np.where(p, x, 0.0)
    n = _trailing_sums(p.astype(np.float64), window, False)
    s = _trailing_sums(xv, window, False)
    ss = _trailing_sums(xv * xv, window, False)
    mean = s / np.maximum(n, 1.0)
    var = np.maximum(ss / np.maximum(n, 1.0) - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var), 1e-3 * np.abs(mean) + 1e-9)
    z = (xv - mean) / std
    result: FloatArray = np.where(p & (n >= need), z, 0.0)
    return result


def zscore_score(kwh: npt.ArrayLike, present: npt.ArrayLike, per_day: int) -> FloatArray:
    result: FloatArray = -rolling_zscore(kwh, present, window=per_day)
    return result


def same_hour_drop(
    kwh: npt.ArrayLike,
    present: npt.ArrayLike,
    per_day: int,
    days: int = SAME_HOUR_DAYS,
    min_count: int = SAME_HOUR_MIN,
) -> FloatArray:
    """``log((m + e) / (kwh + e))`` per reading (see module docstring), ``(T, M)``."""
    x = np.asarray(kwh, dtype=np.float64)
    p = np.asarray(present, dtype=np.bool_)
    xv = np.where(p, x, 0.0)
    pf = p.astype(np.float64)
    same_sum = np.zeros_like(xv)
    same_n = np.zeros_like(xv)
    for d in range(1, days + 1):
        lag = d * per_day
        if lag >= xv.shape[0]:
            break
        same_sum[lag:] += xv[:-lag]
        same_n[lag:] += pf[:-lag]
    span = days * per_day
    all_sum = _trailing_sums(xv, span, False)
    all_n = _trailing_sums(pf, span, False)
    eps = 0.1 * all_sum / np.maximum(all_n, 1.0) + 1e-6
    mean = same_sum / np.maximum(same_n, 1.0)
    drop = np.log((mean + eps) / (xv + eps))
    result: FloatArray = np.where(p & (same_n >= min_count), drop, 0.0)
    return result


#: name -> (score function of (kwh, present, intervals per day), native cut: flagged when above)
BASELINES = {
    "seed_ratio": (seed_ratio_score, -SEED_RATIO_CUT),
    "rolling_zscore": (zscore_score, ZSCORE_CUT),
    "same_hour_drop": (same_hour_drop, SAME_HOUR_CUT),
}
#: The obvious rule: where it detects a theft type well, the model must do better.
OBVIOUS_RULE = "same_hour_drop"
