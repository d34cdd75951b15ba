"""Calibrated scores: every published model outputs a level among its own normal training
readings, so 0.99 means the same for forests trained on different customers."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.features import FEATURE_NAMES
from edge_agent.model import LoadedModel
from ml import calibration
from ml.train import anomaly_scores, train

F = len(FEATURE_NAMES)


def test_levels_are_the_share_of_normal_readings_below() -> None:
    s = np.random.default_rng(0).uniform(0.3, 0.7, 200_000)
    cal = calibration.fit(s)
    assert np.all(np.diff(cal.raw) > 0) and np.all(np.diff(cal.level) > 0)
    assert (cal.raw[0], cal.level[0], cal.raw[-1], cal.level[-1]) == (0.0, 0.0, 1.0, 1.0)
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999):  # within sampling noise (3 standard errors)
        noise = 3 * np.sqrt(q * (1 - q) / s.size)
        assert cal.level_of(0.3 + 0.4 * q) == pytest.approx(q, abs=noise), q
    assert 0.99995 in cal.level  # 200,000 readings tell 1 - 5e-5 apart, not 1 - 1e-5
    assert 0.99999 not in cal.level
    assert cal.raw_of(float(cal.level_of(0.55))) == pytest.approx(0.55)
    few = calibration.fit(s[:1000])
    assert max(v for v in few.level if v < 1.0) == 0.99  # ten readings above, at least
    assert calibration.Calibration.from_json(cal.to_json()) == cal


def test_ties_and_bad_input() -> None:
    tied = calibration.fit(np.r_[np.full(900, 0.4), np.linspace(0.41, 0.9, 100)])
    # the 900 tied readings (90 %) take the highest level of a knot on them, not the lowest
    assert 0.85 <= tied.level_of(0.4) < 0.9
    with pytest.raises(ValueError, match="at least 100"):
        calibration.fit(np.full(99, 0.5))
    for bad in (np.r_[np.full(200, 0.5), np.nan], np.r_[np.full(200, 0.5), 1.5]):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            calibration.fit(bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        calibration.Calibration((0.0, 0.5, 0.5, 1.0), (0.0, 0.4, 0.5, 1.0))


def forest(scale: float, seed: int) -> tuple[LoadedModel, np.ndarray, float]:
    """A forest fitted (unlabelled) on customers whose features spread by ``scale``, its
    published (calibrated) model, fresh readings of the same customers, and its raw 99th
    percentile on them."""
    rng = np.random.default_rng(seed)
    spread = scale * rng.uniform(0.2, 3.0, F)
    trained = train(rng.standard_normal((20_000, F)) * spread, n_estimators=60, random_state=seed)
    model = LoadedModel(
        trained.onnx(),
        name="m",
        version="1",
        threshold=trained.published_threshold,
        feature_names=FEATURE_NAMES,
    )
    fresh = (rng.standard_normal((40_000, F)) * spread).astype(np.float32)
    raw_p99 = float(np.quantile(anomaly_scores(trained.model, fresh), 0.99))
    return model, fresh, raw_p99


def test_one_level_means_the_same_for_every_forest() -> None:
    """Two forests with different raw score scales (one skewed on purpose with heavy-tailed
    customers): the same raw cut flags very different shares of their normal readings, the
    same level the same share."""
    a, fresh_a, raw_a = forest(1.0, 1)
    b, fresh_b, raw_b = forest(0.2, 2)
    heavy = np.random.default_rng(3).standard_t(2, size=fresh_b.shape).astype(np.float32)
    heavy_trained = train(heavy[:20_000], n_estimators=60, random_state=3)
    c = LoadedModel(
        heavy_trained.onnx(), name="c", version="1", threshold=0.5, feature_names=FEATURE_NAMES
    )
    raw_c = float(np.quantile(anomaly_scores(heavy_trained.model, heavy[20_000:]), 0.99))
    assert max(raw_a, raw_b, raw_c) - min(raw_a, raw_b, raw_c) > 0.02  # raw scales differ
    for model, rows in ((a, fresh_a), (b, fresh_b), (c, heavy[20_000:])):
        levels = model.score(rows)
        assert np.mean(levels > 0.99) == pytest.approx(0.01, abs=0.003)
        assert np.mean(levels > 0.9) == pytest.approx(0.10, abs=0.01)


@pytest.mark.parametrize(
    "knots",
    [
        "not json",
        "[[0, 0]]",  # one knot
        "[[0, 0], [0.5, 0.6], [0.4, 0.9], [1, 1]]",  # raw goes down
        "[[0, 0], [0.5, NaN], [1, 1]]",
        "[[0, 0], [1, 1.5]]",  # a level above 1
        '{"raw": [0, 1]}',
        "[[0, 0]" + ", [1, 1]" * 300 + "]",  # more knots than a calibration has
        "[" * 100_000 + "]" * 100_000,  # nested too deep for the JSON parser
        "[[0, 0], [" + "9" * 400 + ", 1]]",  # a number no float holds
    ],
)
def test_a_model_with_a_broken_calibration_is_refused(knots: str) -> None:
    import onnx
    from onnx import helper

    from edge_agent.calibration import METADATA_KEY
    from edge_agent.model import ModelRejected
    from ml.onnx_export import fast_graph

    rng = np.random.default_rng(4)
    trained = train(rng.standard_normal((2000, F)), n_estimators=10)
    proto = fast_graph(trained.model, FEATURE_NAMES, calibration=trained.calibration)
    helper.set_model_props(proto, {"feature_names": ",".join(FEATURE_NAMES), METADATA_KEY: knots})
    with pytest.raises(ModelRejected, match="calibration"):
        LoadedModel(
            onnx.ModelProto.SerializeToString(proto),
            name="m",
            version="1",
            threshold=0.99,
            feature_names=FEATURE_NAMES,
        )


def test_levels_flag_exactly_the_readings_the_raw_threshold_flags() -> None:
    """Every float32 raw score within 1e-5 of the raw threshold, in the tail where a level
    moves least: the levels above the threshold's level are exactly the raw scores above it."""
    cal = calibration.fit(np.random.default_rng(5).uniform(0.3, 0.7, 200_000))
    for raw_threshold in (0.699, 0.9051, 0.5):
        level = float(cal.level_of(raw_threshold))
        lo, hi = np.float32(raw_threshold - 1e-5), np.float32(raw_threshold + 1e-5)
        near = [lo]
        while near[-1] < hi:
            near.append(np.nextafter(near[-1], np.float32(1.0)))
        raw = np.array(near, dtype=np.float32).astype(np.float64)
        assert np.array_equal(cal.level_of(raw) > level, raw > raw_threshold)
