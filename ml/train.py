"""Train the gateway's anomaly model: a scikit-learn IsolationForest on per-reading features.

Scores here are raw, as in the ONNX graph of :mod:`ml.onnx_export` before calibration:
``score = -IsolationForest.score_samples`` (the Liu et al. anomaly score, in (0, 1], higher = more
anomalous); a reading is flagged when ``score > threshold``. The published model outputs levels
(:mod:`ml.calibration`, fitted here on the normal training readings): see
:attr:`TrainedModel.published_threshold`. After training, ``model.offset_ = -threshold`` so that
scikit-learn's own ``predict`` gives the very same labels (-1 = outlier).

How the threshold is chosen
---------------------------
* **Without labels** (the usual case in the field): the forest is fitted on all rows and the
  threshold is the ``1 - alert_rate`` quantile of the training scores: the model raises alerts on
  about ``alert_rate`` of readings like the training data (default 0.1 %: one alert per meter
  every ~21 days at 30-min intervals, a load a revenue-protection team can follow up).
* **With labels** (simulator or confirmed inspections; ``True`` = theft/anomaly): the forest is
  fitted on the normal rows only, and the threshold is the one that maximises F1 on the labelled
  rows, subject to flagging at most ``max_false_alarm_rate`` of the normal rows (so a few
  easy-to-catch thefts cannot push the threshold into an alert flood). If no cut satisfies the
  cap, the cap itself is used.

Either way the threshold is placed halfway between two neighbouring distinct scores, never on a
score, so float32 inference on the gateway cannot flip a label at the boundary.

One-sided features
------------------
An IsolationForest isolates both tails of every feature, and some tails are no evidence of theft:
a meter using more than its own past (a busy evening, guests, a new fridge), or more than the
customers of its class (a large family, a misfiled class). Fitted on both tails, the forest spent
part of its false-alarm budget on such readings. So before fitting, the rises of
:data:`DROP_ONLY_FEATURES` are clipped to 0, and the values of :data:`LOW_SIDE_FEATURES` above
the median of the rows fitted are clipped to that median (:func:`one_sided`). scikit-learn draws
each split strictly below the largest value in its node, so every split on those features lies
below the clip, and the forest gives the unclipped features exactly the scores of the clipped
ones: the gateway, the ONNX graph and the features themselves stay as they are (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from edge_agent.features import FEATURE_NAMES, compute_features_grouped
from ml import calibration
from ml.calibration import MIN_ROWS, Calibration
from ml.onnx_export import export_fast

DEFAULT_ALERT_RATE = 0.001
DEFAULT_MAX_FALSE_ALARM_RATE = 0.01
#: Features the forest reads as drops only (see "One-sided features" above): log ratios of a
#: reading or of recent consumption against the meter's own earlier consumption (below 0: a drop).
DROP_ONLY_FEATURES: tuple[str, ...] = (
    "kwh_vs_same_hour_7d",
    "kwh_vs_24h",
    "kwh_vs_7d",
    "today_vs_best_6d",
    "mean_24h_vs_usual",
)
#: Features the forest reads on their low side only: the meter's level against its class (one
#: forest per class), where a meter far below may have stolen since before its history began.
LOW_SIDE_FEATURES: tuple[str, ...] = ("log_level_7d",)
#: Rows per tree. 1,024 rather than scikit-learn's 256: with per-class forests on these features
#: it detects the subtler thefts better (``python -m bench.detection``, h3 at 5 % FPR most).
DEFAULT_MAX_SAMPLES = 1024


@dataclass
class TrainedModel:
    model: IsolationForest
    feature_names: tuple[str, ...]
    threshold: float  # raw anomaly score
    threshold_method: str
    train_rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: raw score -> level among the normal training readings (None: too few of them)
    calibration: Calibration | None = None

    @property
    def published_threshold(self) -> float:
        """The threshold on the published model's output: its level when calibrated."""
        if self.calibration is None:
            return self.threshold
        return float(self.calibration.level_of(self.threshold))

    def onnx(self) -> bytes:
        """The published graph (:mod:`ml.onnx_export`), calibrated when it can be."""
        return export_fast(self.model, self.feature_names, self.calibration)


def features_for(
    meter_index: npt.ArrayLike,
    ts: npt.ArrayLike,
    kwh: npt.ArrayLike,
    supply_on: npt.ArrayLike,
    flags: npt.ArrayLike,
    register_kwh: npt.ArrayLike,
    interval_s: int,
    flag_bits: Mapping[str, int],
    utc_offset_s: npt.ArrayLike = 0,
) -> npt.NDArray[np.float32]:
    """Training features: the edge's own feature code over many meters at once.

    Rows may come in any order (e.g. a simulator chunk sorted by time); meters may be ids of any
    type (str, int). ``utc_offset_s``: one local clock, or one offset per row. The result is in
    the input row order.
    """
    meter = np.asarray(meter_index)
    ts_a = np.asarray(ts, dtype=np.int64)
    _, codes = np.unique(meter, return_inverse=True)
    order = np.lexsort((ts_a, codes.reshape(-1)))
    kwh_s, on_s, flags_s, reg_s = (
        np.asarray(c)[order] for c in (kwh, supply_on, flags, register_kwh)
    )
    offsets = np.broadcast_to(np.asarray(utc_offset_s, dtype=np.int64), ts_a.shape)[order]
    x_sorted = compute_features_grouped(
        codes.reshape(-1)[order],
        ts_a[order],
        kwh_s,
        on_s,
        flags_s,
        reg_s,
        interval_s,
        flag_bits,
        utc_offset_s=offsets,
    )
    x = np.empty_like(x_sorted)
    x[order] = x_sorted
    return x


def one_sided(
    features: npt.ArrayLike, feature_names: Sequence[str] = FEATURE_NAMES
) -> npt.NDArray[np.float32]:
    """A float32 copy of the rows a forest is fitted on, with the rises of
    :data:`DROP_ONLY_FEATURES` clipped to 0 and the values of :data:`LOW_SIDE_FEATURES` above
    their median (over these rows) clipped to it; features ``feature_names`` does not name are
    left as they are."""
    x = np.array(features, dtype=np.float32)
    for i, name in enumerate(feature_names):
        if name in DROP_ONLY_FEATURES:
            np.minimum(x[:, i], np.float32(0.0), out=x[:, i])
        elif name in LOW_SIDE_FEATURES and x.shape[0]:
            np.minimum(x[:, i], np.float32(np.median(x[:, i])), out=x[:, i])
    return x


def anomaly_scores(model: IsolationForest, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``-score_samples``: higher = more anomalous (same as the exported ONNX graph)."""
    x = np.asarray(features, dtype=np.float32)
    scores: npt.NDArray[np.float64] = -model.score_samples(x)
    return scores


def _between(sorted_desc: npt.NDArray[np.float64], k: int) -> float:
    """A cut flagging the ``k`` highest scores: halfway between the k-th and next lower distinct
    score (above the maximum when ``k == 0``, below the minimum when ``k`` is everything)."""
    n = sorted_desc.size
    if n == 0:
        raise ValueError("no scores")
    if k <= 0:
        return float(np.nextafter(sorted_desc[0], np.inf)) + 1e-6
    last = sorted_desc[k - 1]
    lower = sorted_desc[k:][sorted_desc[k:] < last]
    if lower.size == 0:
        return float(last) - 1e-6
    return float((last + lower[0]) / 2.0)


def quantile_threshold(scores: npt.ArrayLike, alert_rate: float) -> float:
    """Threshold flagging ``alert_rate`` of ``scores`` (ties resolved downward)."""
    if not 0.0 <= alert_rate < 1.0:
        raise ValueError("alert_rate must be in [0, 1)")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = int(np.floor(alert_rate * s.size))
    # Do not split a tie: flag the whole group of equal scores or none of it.
    if 0 < k < s.size and s[k - 1] == s[k]:
        k = int(np.searchsorted(-s, -s[k - 1], side="left"))
    return _between(s, k)


def f1_threshold(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    max_false_alarm_rate: float = DEFAULT_MAX_FALSE_ALARM_RATE,
) -> float:
    """Threshold maximising F1 on labelled rows, flagging at most ``max_false_alarm_rate`` of
    the normal ones."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.bool_)
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in shape")
    if not y.any() or y.all():
        raise ValueError("labels need both normal and anomalous rows")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # Only cut between distinct scores: the last index of each group of equal scores.
    cut_end = np.r_[s_desc[1:] != s_desc[:-1], True]
    tp = np.cumsum(y_desc)[cut_end]
    fp = np.cumsum(~y_desc)[cut_end]
    k = np.flatnonzero(cut_end) + 1
    precision = tp / k
    recall = tp / y.sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    allowed = fp <= max_false_alarm_rate * (~y).sum()
    if not allowed.any() or f1[allowed].max() <= 0:
        normal = s[~y]
        return quantile_threshold(normal, max_false_alarm_rate)
    best = int(np.flatnonzero(allowed)[np.argmax(f1[allowed])])
    return _between(s_desc, int(k[best]))


def evaluate(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> dict[str, float]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.bool_)
    flagged = s > threshold
    tp = float(np.sum(flagged & y))
    fp = float(np.sum(flagged & ~y))
    fn = float(np.sum(~flagged & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alert_rate": float(flagged.mean()) if s.size else 0.0,
        "false_alarm_rate": fp / max(1.0, float((~y).sum())),
    }


def fit_isolation_forest(
    features: npt.ArrayLike,
    *,
    n_estimators: int = 100,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_features: float = 1.0,
    random_state: int = 0,
) -> IsolationForest:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("need a 2-D feature matrix with at least 2 rows")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    model = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, x.shape[0]),
        max_features=max_features,
        contamination="auto",
        random_state=random_state,
    )
    model.fit(x)
    return model


def train(
    features: npt.ArrayLike,
    *,
    labels: npt.ArrayLike | None = None,
    feature_names: Sequence[str] = FEATURE_NAMES,
    alert_rate: float = DEFAULT_ALERT_RATE,
    max_false_alarm_rate: float = DEFAULT_MAX_FALSE_ALARM_RATE,
    n_estimators: int = 100,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    random_state: int = 0,
) -> TrainedModel:
    """Fit the forest and choose its threshold (see module docstring)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"features must be (n, {len(feature_names)}), got {x.shape}")
    y = None if labels is None else np.asarray(labels, dtype=np.bool_)
    if y is not None and y.shape != (x.shape[0],):
        raise ValueError("labels must have one entry per row")
    fit_rows = x if y is None else x[~y]
    model = fit_isolation_forest(
        one_sided(fit_rows, feature_names),
        n_estimators=n_estimators,
        max_samples=max_samples,
        random_state=random_state,
    )
    # Every row scored once (scores do not depend on offset_): the normal rows' scores set the
    # quantile threshold and the calibration, all rows' the F1 threshold and the metrics.
    scores = anomaly_scores(model, x)
    normal_scores = scores if y is None else scores[~y]
    if y is None or not y.any() or y.all():
        threshold = quantile_threshold(normal_scores, alert_rate)
        method = f"quantile(1-{alert_rate:g}) of training scores"
    else:
        threshold = f1_threshold(scores, y, max_false_alarm_rate)
        method = f"max F1 on labelled rows, false alarms <= {max_false_alarm_rate:g}"
    model.offset_ = -threshold
    result = TrainedModel(
        model=model,
        feature_names=tuple(feature_names),
        threshold=threshold,
        threshold_method=method,
        train_rows=int(fit_rows.shape[0]),
        calibration=calibration.fit(normal_scores) if normal_scores.size >= MIN_ROWS else None,
    )
    if y is not None:
        result.metrics = evaluate(scores, y, threshold)
    return result
