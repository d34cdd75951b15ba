"""Export a fitted scikit-learn IsolationForest as a small, fast ONNX graph.

The stock skl2onnx converter emits ~27 nodes per tree (one TreeEnsembleRegressor per tree plus the
path-length arithmetic), ~2,700 nodes for 100 trees: ~0.8 ms per row, all of it node overhead.
Here the forest is a few ``ai.onnx.ml.TreeEnsemble`` nodes (opset ai.onnx.ml 5; onnxruntime
implements it on CPU) of :data:`TREES_PER_NODE` trees each, their ``Sum`` and one ``Exp``:

    input  "features"  float32 [N, F]
    TreeEnsemble(SUM over its 10 trees) x 10 -> s_k[N, 1]
    Sum                                      -> s[N, 1]
    Exp                                      -> "score" float32 [N, 1]

plus, for a calibrated model, the knots that map that raw score to a level in the model's
metadata (``ml.calibration``).

Why ten nodes and not one: onnxruntime's kernel picks its loop order by the size of the ensemble,
and with few trees a block of rows goes through every tree while the trees sit in cache. Batches
score about 25 % faster than with one node of 100 trees, a single row somewhat slower
(``python -m bench.scoring``; results in ``bench/RESULTS.md``).

Each leaf carries its tree's share of the log of the IsolationForest anomaly score:

    w_leaf = -ln(2) * (depth(leaf) + c(n_leaf) - 1) / (n_trees * c(max_samples))

where ``c(n)`` is the average path length of an unsuccessful BST search (the correction for the
``n_leaf`` training samples left in the leaf), exactly as scikit-learn computes it. Splits whose
two sides end in leaves of equal weight are merged into one leaf (exact; ~20 % fewer nodes).
The sum over trees is ``-ln(2) * E[h(x)] / c(max_samples)``, so the output is
``exp(sum) = 2 ** (-E[h(x)] / c(psi))``, the anomaly score of Liu et al., which is
``-IsolationForest.score_samples(x)``: in (0, 1], HIGHER = MORE ANOMALOUS. A reading is an
outlier when ``score > threshold`` (``threshold = -offset_``).

scikit-learn compares float32 features with float64 thresholds; the graph stores each threshold
as the largest float32 not above it, which gives the very same branch for every float32 input.
Per-tree feature subsets (``max_features < 1``) are mapped back to input columns. NaN inputs follow
scikit-learn's ``missing_go_to_left``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import IsolationForest

from ml.calibration import METADATA_KEY as CALIBRATION_KEY
from ml.calibration import Calibration

INPUT_NAME = "features"
OUTPUT_NAME = "score"
ONNX_OPSET = 21
ML_OPSET = 5
IR_VERSION = 10
_BRANCH_LEQ = 0
# Trees per TreeEnsemble node (see the module docstring): the fastest for batches.
TREES_PER_NODE = 10


def average_path_length(n: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """c(n): average path length of an unsuccessful search in a BST built from n points."""
    n_arr = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n_arr)
    out[n_arr == 2] = 1.0
    big = n_arr > 2
    nb = n_arr[big]
    out[big] = 2.0 * (np.log(nb - 1.0) + np.euler_gamma) - 2.0 * (nb - 1.0) / nb
    return out


def _float32_at_most(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Largest float32 <= value, element-wise (so ``x32 <= t32`` iff ``x32 <= t64``)."""
    t32 = values.astype(np.float32)
    above = t32.astype(np.float64) > values
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _merge_equal_leaves(
    left: npt.NDArray[np.intp], right: npt.NDArray[np.intp], weight: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Turn every split whose two sides end in leaves of identical weight into one leaf.

    Exact: a row gets the same weight whichever side it takes (typically a last split of two
    training samples into 1 + 1 at the same depth). About a fifth of the splits go, and rows
    reach their leaf in fewer steps. Returns (is_leaf, weight, reachable) per sklearn node.
    """
    is_leaf = left == -1
    weight = weight.copy()
    # sklearn numbers children after their parent: walk backwards, merging bottom-up.
    for node in range(left.size - 1, -1, -1):
        lc, rc = left[node], right[node]
        if lc != -1 and is_leaf[lc] and is_leaf[rc] and weight[lc] == weight[rc]:
            is_leaf[node] = True
            weight[node] = weight[lc]
    reachable = np.zeros(left.size, dtype=np.bool_)
    reachable[0] = True
    for node in range(left.size):
        if reachable[node] and not is_leaf[node]:
            reachable[left[node]] = True
            reachable[right[node]] = True
    return is_leaf, weight, reachable


def _ensemble_node(
    trees: Sequence[tuple[Any, npt.NDArray[np.int64]]], scale: float, output: str
) -> onnx.NodeProto:
    """One ``TreeEnsemble`` node (SUM of its trees' leaf weights) for ``(estimator, columns)``."""
    roots: list[int] = []
    feat: list[npt.NDArray[np.int64]] = []
    splits: list[npt.NDArray[np.float32]] = []
    true_ids: list[npt.NDArray[np.int64]] = []
    true_leaf: list[npt.NDArray[np.int64]] = []
    false_ids: list[npt.NDArray[np.int64]] = []
    false_leaf: list[npt.NDArray[np.int64]] = []
    missing_true: list[npt.NDArray[np.int64]] = []
    weights: list[npt.NDArray[np.float64]] = []
    node_base = 0
    leaf_base = 0
    for estimator, columns in trees:
        tree = estimator.tree_
        left = tree.children_left
        right = tree.children_right
        depth = tree.compute_node_depths().astype(np.float64)
        weight = scale * (depth + average_path_length(tree.n_node_samples) - 1.0)
        is_leaf, weight, reachable = _merge_equal_leaves(left, right, weight)
        internal = np.flatnonzero(reachable & ~is_leaf)
        leaves = np.flatnonzero(reachable & is_leaf)
        # Position of every kept node in the nodes_* (internal) or leaf_* (leaf) lists.
        pos = np.full(tree.node_count, -1, dtype=np.int64)
        pos[internal] = node_base + np.arange(internal.size)
        pos[leaves] = leaf_base + np.arange(leaves.size)
        weights.append(weight[leaves])
        if internal.size == 0:  # a single-leaf tree: one node whose both branches hit the leaf
            roots.append(node_base)
            feat.append(np.zeros(1, np.int64))
            splits.append(np.zeros(1, np.float32))
            for ids, flag in ((true_ids, true_leaf), (false_ids, false_leaf)):
                ids.append(np.array([leaf_base], np.int64))
                flag.append(np.ones(1, np.int64))
            missing_true.append(np.zeros(1, np.int64))
            node_base += 1
        else:
            roots.append(int(pos[0]))
            feat.append(np.asarray(columns, dtype=np.int64)[tree.feature[internal]])
            splits.append(_float32_at_most(tree.threshold[internal]))
            lchild, rchild = left[internal], right[internal]
            true_ids.append(pos[lchild])
            true_leaf.append(is_leaf[lchild].astype(np.int64))
            false_ids.append(pos[rchild])
            false_leaf.append(is_leaf[rchild].astype(np.int64))
            missing_true.append(np.asarray(tree.missing_go_to_left[internal], dtype=np.int64))
            node_base += internal.size
        leaf_base += leaves.size

    def ints(parts: list[npt.NDArray[np.int64]]) -> list[int]:
        return [int(v) for v in np.concatenate(parts)]

    n_nodes = node_base
    leaf_weights = np.concatenate(weights).astype(np.float32)
    return helper.make_node(
        "TreeEnsemble",
        [INPUT_NAME],
        [output],
        domain="ai.onnx.ml",
        name=output,
        n_targets=1,
        aggregate_function=1,  # SUM
        post_transform=0,  # NONE
        tree_roots=roots,
        nodes_featureids=ints(feat),
        nodes_modes=numpy_helper.from_array(np.full(n_nodes, _BRANCH_LEQ, np.uint8), "modes"),
        nodes_splits=numpy_helper.from_array(np.concatenate(splits), "splits"),
        nodes_truenodeids=ints(true_ids),
        nodes_trueleafs=ints(true_leaf),
        nodes_falsenodeids=ints(false_ids),
        nodes_falseleafs=ints(false_leaf),
        nodes_missing_value_tracks_true=ints(missing_true),
        leaf_targetids=[0] * int(leaf_weights.size),
        leaf_weights=numpy_helper.from_array(leaf_weights, "weights"),
    )


def fast_graph(
    model: IsolationForest,
    feature_names: Sequence[str],
    *,
    graph_name: str = "eiot_iforest",
    trees_per_node: int = TREES_PER_NODE,
    calibration: Calibration | None = None,
) -> onnx.ModelProto:
    """The fitted ``model`` as TreeEnsemble nodes, their Sum and an Exp (module docstring); with
    ``calibration``, its knots in the model's metadata (:mod:`ml.calibration`)."""
    n_features = int(model.n_features_in_)
    if len(feature_names) != n_features:
        raise ValueError(f"{len(feature_names)} feature names for {n_features} features")
    n_trees = len(model.estimators_)
    psi = int(model.max_samples_)
    if psi < 2:
        raise ValueError("max_samples must be >= 2")
    scale = -np.log(2.0) / (n_trees * float(average_path_length([psi])[0]))

    trees = list(zip(model.estimators_, model.estimators_features_, strict=True))
    step = max(1, int(trees_per_node))
    chunks = [trees[i : i + step] for i in range(0, n_trees, step)]
    if len(chunks) == 1:
        nodes = [_ensemble_node(chunks[0], scale, "log_score")]
    else:
        nodes = [_ensemble_node(c, scale, f"log_score_{k}") for k, c in enumerate(chunks)]
        nodes.append(helper.make_node("Sum", [n.output[0] for n in nodes], ["log_score"]))
    exp = helper.make_node("Exp", ["log_score"], [OUTPUT_NAME], name="anomaly_score")
    graph = helper.make_graph(
        [*nodes, exp],
        graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid("ai.onnx.ml", ML_OPSET),
        ],
        ir_version=IR_VERSION,
        producer_name="eiot.ml.onnx_export",
    )
    props = {"feature_names": ",".join(feature_names)}
    if calibration is not None:  # applied by edge_agent.model.LoadedModel (ml.calibration)
        props[CALIBRATION_KEY] = calibration.to_json()
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_fast(
    model: IsolationForest,
    feature_names: Sequence[str],
    calibration: Calibration | None = None,
) -> bytes:
    """Serialized :func:`fast_graph`."""
    proto = fast_graph(model, feature_names, calibration=calibration)
    data: bytes = proto.SerializeToString()
    return data


def export_stock(model: IsolationForest, n_features: int) -> bytes:
    """The stock skl2onnx conversion, for comparison only.

    Its ``scores`` output is ``decision_function`` (= ``score_samples - offset_``).
    """
    from skl2onnx import to_onnx

    sample = np.zeros((1, n_features), dtype=np.float32)
    proto = to_onnx(model, sample, target_opset={"": 17, "ai.onnx.ml": 3})
    data: bytes = proto.SerializeToString()
    return data
