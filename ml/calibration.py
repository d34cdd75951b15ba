"""Calibrated scores: a forest's raw anomaly score mapped to "how unusual among normal readings".

Raw IsolationForest scores of two forests are not on one scale: a forest trained on lifeline
homes and one trained on shops give different raw scores to equally unusual readings, so a
ranking that mixes them (the inspection list, alerts of a gateway with per-class models) is
skewed. Each model therefore maps its raw score ``s`` to its *level*: the share of the normal
training readings of that model that scored below ``s`` (the empirical distribution function,
``1 - p`` where ``p`` is the tail p-value). A level of 0.999 means "one normal reading in a
thousand scores higher" for every model.

The map is piecewise linear between knots: the raw-score quantiles of the normal training
readings at fixed levels, denser in the tail (0.9, 0.99, 0.999, ... up to what the number of
readings supports), plus ``(0, 0)`` and ``(1, 1)`` at the ends of the raw score's range (0, 1],
so it is strictly increasing: ranks and alert sets are those of the raw scores. The knots go into
the exported ONNX file's metadata (signed with it, ``edge_agent.calibration``); the gateway's
model applies them to the graph's raw output, so its ``score`` and ``threshold`` are levels, and
so is everything downstream (alerts, ``raw.readings.score``, the inspection list). Applied
outside the graph: onnxruntime's float64 kernels would cost the gateway memory, and a float32
sum of ~30 segments would blur levels near the threshold.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.calibration import METADATA_KEY, Calibration

__all__ = ["METADATA_KEY", "MIN_ROWS", "Calibration", "fit"]

# Levels of the knots: every 5 % up to 0.9, then 1 - 5 * 10^-k and 1 - 10^-k.
_BODY = np.linspace(0.0, 0.9, 19)
_TAIL = np.array(sorted(1.0 - f * 10.0**-k for k in range(2, 7) for f in (5.0, 1.0)))
#: Fewest normal readings a calibration is fitted on.
MIN_ROWS = 100


def fit(normal_scores: npt.ArrayLike) -> Calibration:
    """The calibration of a model whose normal training readings scored ``normal_scores`` (raw
    anomaly scores in (0, 1])."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if s.size < MIN_ROWS:
        raise ValueError(f"calibration needs at least {MIN_ROWS} normal readings, got {s.size}")
    if not (np.all(np.isfinite(s)) and s[0] > 0.0 and s[-1] <= 1.0):
        raise ValueError("raw anomaly scores must lie in (0, 1]")
    # Tail levels the sample can tell apart: at least ten readings above the knot.
    levels = np.r_[_BODY, _TAIL[_TAIL <= 1.0 - 10.0 / s.size]]
    raw = np.asarray(np.quantile(s, levels, method="linear"), dtype=np.float64)
    raw_k: list[float] = [0.0]
    level_k: list[float] = [0.0]
    for r, v in zip(raw.tolist(), levels.tolist(), strict=True):
        if r > raw_k[-1] and v > level_k[-1] and r < 1.0:
            raw_k.append(r)
            level_k.append(v)
        elif r == raw_k[-1]:  # a tie: the tied scores take the higher level
            level_k[-1] = max(level_k[-1], v)
    raw_k.append(1.0)
    level_k.append(1.0)
    return Calibration(tuple(raw_k), tuple(level_k))
