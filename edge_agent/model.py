"""Verify and load a signed ``model.v1`` anomaly model; score feature rows with it.

Signed bytes (what the Ed25519 signature covers)::

    b"eiot.model.v1\\x00"                     14-byte context string
    len(meta).to_bytes(8, "big")              length of the metadata JSON
    meta                                      canonical metadata JSON (ASCII)
    onnx_bytes                                the model file, as decoded from onnx_b64

``meta`` is the JSON object of the message's ``name, version, created_at, sha256, feature_names,
threshold``, exactly as the wire serialises them (``created_at`` as the UTC ``...Z`` string of
``edge_agent.wire``), keys sorted, no whitespace (``separators=(",", ":")``), non-ASCII escaped
(``ensure_ascii=True``), NaN/inf forbidden, floats in Python's shortest round-trip ``repr``.
``signature`` in the message is the standard base64 of the 64-byte signature, ``onnx_b64`` the
standard base64 of the model, ``sha256`` the lowercase hex digest of the model bytes.

The public key (agent configuration) is the raw 32-byte Ed25519 key, as 64 hex characters or
base64. Scores: HIGHER = MORE ANOMALOUS. The graph outputs the IsolationForest anomaly score in
(0, 1]; a model from ``ml`` carries in its ONNX metadata the knots that map it to its level among
the model's normal training readings, in [0, 1] (``edge_agent.calibration``), and ``score`` is
then that level. A row is anomalous when ``score > threshold``, both on the model's scale.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge_agent.calibration import METADATA_KEY as CALIBRATION_KEY
from edge_agent.calibration import Calibration
from edge_agent.features import FEATURE_NAMES
from edge_agent.signing import (
    MAX_MODEL_BYTES,
    ModelRejected,
    canonical_metadata,
    parse_public_key,
    signed_bytes,
    verify_message,
)
from edge_agent.wire import ModelMessage

__all__ = [
    "MAX_MODEL_BYTES",
    "LoadedModel",
    "ModelRejected",
    "canonical_metadata",
    "load_model",
    "parse_public_key",
    "signed_bytes",
    "verify_message",
]


# zlib level of a lazy model's kept graph: near the best ratio, ~10 ms per model loaded.
_PACK_LEVEL = 6


class LoadedModel:
    """A verified model, ready to score feature rows (one low-latency onnxruntime session).

    ``lazy``: the session that verified the graph is let go, and made again on the first
    ``score``. Each session holds its trees in a few MB; an agent holding a model set's members
    pays for those of the members its meters use, not for the fallbacks none of them reaches.
    The verified graph is kept zlib-compressed until then (trees compress to under half: about
    200 kB less per member held)."""

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        name: str,
        version: str,
        threshold: float,
        feature_names: Sequence[str],
        sha256: str = "",
        created_at: datetime | None = None,
        threads: int = 1,
        optimize_graph: bool = False,
        lazy: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.threshold = float(threshold)
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        self.sha256 = sha256 or hashlib.sha256(onnx_bytes).hexdigest()
        self.created_at = created_at
        self._threads = max(1, int(threads))
        self._optimize_graph = optimize_graph
        self._session: Any = self._new_session(onnx_bytes)
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelRejected("invalid_onnx", "expected one input and an output")
        self._input = str(inputs[0].name)
        self._outputs = [str(outputs[0].name)]
        knots = self._session.get_modelmeta().custom_metadata_map.get(CALIBRATION_KEY)
        try:
            self.calibration = None if knots is None else Calibration.from_json(knots)
        except ValueError as exc:
            raise ModelRejected("invalid_onnx", f"calibration: {exc}"[:300]) from None
        width = inputs[0].shape[-1] if inputs[0].shape else None
        if isinstance(width, int) and width != len(self.feature_names):
            raise ModelRejected(
                "feature_mismatch",
                f"graph takes {width} features, message names {len(self.feature_names)}",
            )
        try:
            probe = self.score(np.zeros((1, len(self.feature_names)), dtype=np.float32))
        except Exception as exc:
            raise ModelRejected("invalid_onnx", f"probe run failed: {str(exc)[:300]}") from None
        if probe.shape != (1,) or not np.isfinite(probe).all():
            raise ModelRejected("invalid_onnx", f"probe gave {probe!r}")
        self._packed: bytes | None = None
        if lazy:
            self._packed, self._session = zlib.compress(onnx_bytes, _PACK_LEVEL), None

    @property
    def session_open(self) -> bool:
        """Whether the model holds its onnxruntime session now (a lazy one: once it scored)."""
        return self._session is not None

    def release(self) -> None:
        """Close a lazy model's session (it opens again on the next ``score``); a model that
        did not keep its graph keeps its session."""
        if self._packed is not None:
            self._session = None

    def _new_session(self, onnx_bytes: bytes) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A published graph is already in its final form (ml.onnx_export: TreeEnsemble nodes,
        # a Sum, an Exp): onnxruntime's optimiser finds nothing to change in it, and running it
        # costs the agent up to 1 MB of memory. A graph made otherwise (the benchmark's stock
        # skl2onnx graph) asks for it with ``optimize_graph``.
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self._optimize_graph
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own, undocumented exception types
            raise ModelRejected("invalid_onnx", str(exc)[:300]) from None

    def score(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Anomaly scores (higher = more anomalous) of rows ``(n, F)`` or one row ``(F,)``: the
        graph's output, mapped to its level when the model carries a calibration. float64: the
        map is strictly increasing, and in float64 it keeps raw scores a float32 step apart
        apart, so ``score > threshold`` flags exactly the readings the raw score would."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (n, {len(self.feature_names)}) features, got {x.shape}")
        if self._session is None:
            assert self._packed is not None  # a lazy model keeps its verified graph
            self._session = self._new_session(zlib.decompress(self._packed))
        result = self._session.run(self._outputs, {self._input: x})[0]
        raw = np.asarray(result, dtype=np.float32).reshape(-1).astype(np.float64)
        if self.calibration is None:
            return raw
        return self.calibration.level_of(raw)

    def is_anomaly(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        flagged: npt.NDArray[np.bool_] = np.asarray(scores, dtype=np.float64) > self.threshold
        return flagged

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, {self.version!r}, threshold={self.threshold:g})"


def load_model(
    message: ModelMessage | Mapping[str, Any],
    public_key: str | bytes,
    *,
    expected_features: Sequence[str] | None = FEATURE_NAMES,
    threads: int = 1,
    lazy: bool = False,
) -> LoadedModel:
    """Verify a ``model.v1`` message and build its :class:`LoadedModel`.

    ``expected_features`` (default: this agent's :data:`FEATURE_NAMES`) must equal the model's
    ``feature_names``, in order; pass None to skip that check.
    """
    msg, onnx_bytes = verify_message(message, public_key)
    if expected_features is not None and list(msg.feature_names) != list(expected_features):
        raise ModelRejected(
            "feature_mismatch",
            f"model wants {msg.feature_names}, agent computes {list(expected_features)}",
        )
    return LoadedModel(
        onnx_bytes,
        name=msg.name,
        version=msg.version,
        threshold=msg.threshold,
        feature_names=msg.feature_names,
        sha256=msg.sha256,
        created_at=msg.created_at,
        threads=threads,
        lazy=lazy,
    )
