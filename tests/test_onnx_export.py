from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.ensemble import IsolationForest

from edge_agent.features import FEATURE_NAMES, compute_features_grouped
from ml.onnx_export import INPUT_NAME, average_path_length, export_fast, fast_graph
from ml.synthetic import FLAG_BITS, make_readings
from ml.train import train

NAMES = [f"f{i}" for i in range(7)]


def session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def onnx_scores(data: bytes, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = session(data).run(None, {INPUT_NAME: x.astype(np.float32)})[0]
    assert out.shape == (x.shape[0], 1)
    return out.ravel().astype(np.float64)


def test_average_path_length_matches_the_formula() -> None:
    c = average_path_length([0, 1, 2, 3, 256])
    assert c[0] == 0.0 and c[1] == 0.0 and c[2] == 1.0
    assert c[3] == pytest.approx(2 * (np.log(2) + np.euler_gamma) - 4 / 3)
    assert c[4] == pytest.approx(2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_features": 0.5},
        {"max_samples": 5, "n_estimators": 30},
        {"max_samples": 2, "n_estimators": 10},
        {"bootstrap": True, "n_estimators": 40},
    ],
)
def test_parity_with_score_samples_and_predict(params: dict[str, Any]) -> None:
    rng = np.random.default_rng(7)
    x_train = rng.normal(size=(3000, len(NAMES))).astype(np.float32)
    x_train[:, 3] = np.round(x_train[:, 3])  # ties, like the many neutral feature values
    model = IsolationForest(random_state=1, **params).fit(x_train)
    model.offset_ = -0.55  # an arbitrary threshold for label parity
    x = (rng.normal(size=(20_000, len(NAMES))) * 1.7).astype(np.float32)
    x[:500] = x_train[:500]  # exact training points sit right on split boundaries' data
    expected = -model.score_samples(x)
    got = onnx_scores(export_fast(model, NAMES), x)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.array_equal(got > 0.55, model.predict(x) == -1)


def test_parity_with_nan_inputs() -> None:
    rng = np.random.default_rng(8)
    model = IsolationForest(n_estimators=30, random_state=0).fit(
        rng.normal(size=(1000, len(NAMES))).astype(np.float32)
    )
    x = rng.normal(size=(5000, len(NAMES))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    got = onnx_scores(export_fast(model, NAMES), x)
    assert np.abs(got + model.score_samples(x)).max() <= 1e-5


def test_thresholds_rounded_down_to_float32() -> None:
    """A float32 input between a float64 threshold t and float32(t) must branch like sklearn."""
    rng = np.random.default_rng(5)
    x_train = rng.exponential(size=(300, 1)).astype(np.float32)
    model = IsolationForest(n_estimators=20, random_state=3).fit(x_train)
    t = np.concatenate([e.tree_.threshold[e.tree_.children_left != -1] for e in model.estimators_])
    t32 = t.astype(np.float32)
    assert np.any(t32.astype(np.float64) != t)  # the case this test is about does occur
    probes = np.concatenate([t32, np.nextafter(t32, np.float32(np.inf))]).reshape(-1, 1)
    got = onnx_scores(export_fast(model, ["x"]), probes)
    assert np.abs(got + model.score_samples(probes)).max() <= 1e-6


def test_graph_is_small_tree_ensembles_a_sum_and_an_exp() -> None:
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=100, random_state=0).fit(
        rng.normal(size=(2000, len(NAMES))).astype(np.float32)
    )
    proto = fast_graph(model, NAMES)
    ops = [(n.op_type, n.domain) for n in proto.graph.node]
    assert ops == [("TreeEnsemble", "ai.onnx.ml")] * 10 + [("Sum", ""), ("Exp", "")]
    assert {o.domain: o.version for o in proto.opset_import}["ai.onnx.ml"] == 5
    onnx.checker.check_model(proto, full_check=True)
    roots = [len(a.ints) for n in proto.graph.node for a in n.attribute if a.name == "tree_roots"]
    assert roots == [10] * 10
    with pytest.raises(ValueError):
        fast_graph(model, NAMES[:-1])


@pytest.mark.parametrize("per_node", [1, 30, 100, 200])
def test_any_split_of_the_trees_over_nodes_gives_the_same_scores(per_node: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, len(NAMES))).astype(np.float32)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=3).fit(x)
    proto = fast_graph(model, NAMES, trees_per_node=per_node)
    ensembles = [n for n in proto.graph.node if n.op_type == "TreeEnsemble"]
    assert len(ensembles) == -(-100 // per_node)
    probes = rng.normal(scale=2.0, size=(5000, len(NAMES))).astype(np.float32)
    got = onnx_scores(proto.SerializeToString(), probes)
    assert np.abs(got + model.score_samples(probes)).max() <= 1e-5


def test_parity_on_real_features_with_trained_threshold() -> None:
    r = make_readings(30, 16, seed=21, attack_fraction=0.5)
    x = compute_features_grouped(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, FLAG_BITS
    )
    trained = train(x, labels=r.label != "", n_estimators=60)
    got = onnx_scores(export_fast(trained.model, FEATURE_NAMES), x)
    assert np.abs(got + trained.model.score_samples(x)).max() <= 1e-5
    assert np.array_equal(got > trained.threshold, trained.model.predict(x) == -1)
    assert 0 < int((got > trained.threshold).sum()) < x.shape[0]
