from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.features import FEATURE_NAMES
from edge_agent.model import (
    LoadedModel,
    ModelRejected,
    canonical_metadata,
    load_model,
    parse_public_key,
    signed_bytes,
)
from edge_agent.signing import SIGNING_CONTEXT
from edge_agent.wire import ModelMessage, decode, encode
from ml.publish import (
    KEY_ENV,
    KEY_FILE_ENV,
    build_model_message,
    generate_keypair,
    load_private_key,
    message_from_trained,
    public_key_b64,
)
from ml.train import TrainedModel, anomaly_scores, train

CREATED = datetime(2026, 3, 1, 18, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(FEATURE_NAMES))).astype(np.float32)
    return train(x, n_estimators=40)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def message(trained: TrainedModel, key: Ed25519PrivateKey) -> dict[str, Any]:
    return message_from_trained(
        trained, name="iforest", version="2026.03.01-1", private_key=key, created_at=CREATED
    )


def rejected(msg: dict[str, Any], public_key: str | bytes) -> str:
    with pytest.raises(ModelRejected) as info:
        load_model(msg, public_key)
    return info.value.reason


def test_load_and_score_like_sklearn(
    trained: TrainedModel, key: Ed25519PrivateKey, message: dict[str, Any]
) -> None:
    model = load_model(message, public_key_b64(key))
    assert isinstance(model, LoadedModel)
    assert (model.name, model.version) == ("iforest", "2026.03.01-1")
    # the published model is calibrated: its scores and threshold are levels (ml.calibration)
    assert trained.calibration is not None
    assert model.threshold == trained.published_threshold
    assert model.threshold == pytest.approx(trained.calibration.level_of(trained.threshold))
    assert model.feature_names == FEATURE_NAMES
    assert model.created_at == CREATED
    x = np.random.default_rng(1).normal(size=(2000, len(FEATURE_NAMES))) * 2
    scores = model.score(x)
    assert scores.shape == (2000,)
    raw = anomaly_scores(trained.model, x)
    assert np.abs(scores - trained.calibration.level_of(raw)).max() <= 1e-4
    # the same order: along the raw scores the levels never go down (beyond float32 rounding)
    assert np.diff(scores[np.argsort(raw)].astype(np.float64)).min() >= -1e-6
    sk_labels = trained.model.predict(x.astype(np.float32)) == -1
    assert np.array_equal(model.is_anomaly(scores), sk_labels)
    one = model.score(x[0])
    assert one.shape == (1,) and one[0] == scores[0]
    with pytest.raises(ValueError):
        model.score(np.zeros((1, 3)))
    # The agent skips onnxruntime's graph optimiser (the published graph is final): the same
    # graph, optimised, gives the same scores.
    optimised = LoadedModel(
        base64.b64decode(message["onnx_b64"]),
        name="iforest",
        version="x",
        threshold=model.threshold,
        feature_names=FEATURE_NAMES,
        optimize_graph=True,
    )
    np.testing.assert_array_equal(optimised.score(x), scores)


def test_a_lazy_model_opens_its_session_when_it_first_scores(
    key: Ed25519PrivateKey, message: dict[str, Any]
) -> None:
    eager = load_model(message, public_key_b64(key))
    lazy = load_model(message, public_key_b64(key), lazy=True)
    assert eager.session_open and not lazy.session_open  # verified, then let go
    assert lazy.calibration is not None  # read while it was open
    x = np.random.default_rng(2).normal(size=(500, len(FEATURE_NAMES)))
    np.testing.assert_array_equal(lazy.score(x), eager.score(x))
    assert lazy.session_open
    # released, it keeps its graph compressed, and opens the same session again
    lazy.release()
    assert not lazy.session_open
    assert 0 < len(lazy._packed or b"") < 0.5 * len(base64.b64decode(message["onnx_b64"]))
    np.testing.assert_array_equal(lazy.score(x), eager.score(x))
    eager.release()  # a model that did not keep its graph keeps its session
    assert eager.session_open
    # A graph that fails its checks is refused at load, lazy or not.
    with pytest.raises(ModelRejected):
        LoadedModel(
            b"not onnx",
            name="iforest",
            version="x",
            threshold=0.5,
            feature_names=FEATURE_NAMES,
            lazy=True,
        )


def test_message_survives_the_wire(key: Ed25519PrivateKey, message: dict[str, Any]) -> None:
    again = decode(encode(message, compress=True))
    assert load_model(again, public_key_b64(key)).version == "2026.03.01-1"
    assert load_model(ModelMessage.model_validate(again), public_key_b64(key)).name == "iforest"


def test_public_key_formats(key: Ed25519PrivateKey, message: dict[str, Any]) -> None:
    raw = base64.b64decode(public_key_b64(key))
    for form in (
        raw,
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        f"  {raw.hex()}\n",
    ):
        assert parse_public_key(form) == raw
        load_model(message, form)
    for bad in ("", "abc", raw.hex()[:-2], base64.b64encode(raw[:31]).decode(), "zz" * 32):
        with pytest.raises(ModelRejected) as info:
            parse_public_key(bad)
        assert info.value.reason == "bad_public_key"


def test_wrong_key_is_rejected(message: dict[str, Any]) -> None:
    other = public_key_b64(Ed25519PrivateKey.generate())
    assert rejected(message, other) == "bad_signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 0.99),
        ("version", "2026.03.01-2"),
        ("name", "other"),
        ("created_at", "2026-03-01T18:30:01Z"),
        ("feature_names", list(reversed(FEATURE_NAMES))),
    ],
)
def test_tampered_metadata_breaks_the_signature(
    key: Ed25519PrivateKey, message: dict[str, Any], field: str, value: Any
) -> None:
    tampered = dict(message, **{field: value})
    reason = rejected(tampered, public_key_b64(key))
    assert reason == "bad_signature"


def test_tampered_model_bytes(key: Ed25519PrivateKey, message: dict[str, Any]) -> None:
    data = bytearray(base64.b64decode(message["onnx_b64"]))
    data[len(data) // 2] ^= 0xFF
    swapped = dict(message, onnx_b64=base64.b64encode(bytes(data)).decode())
    assert rejected(swapped, public_key_b64(key)) == "checksum_mismatch"
    # An attacker who also fixes the checksum still lacks the signature.
    rehashed = dict(swapped, sha256=hashlib.sha256(bytes(data)).hexdigest())
    assert rejected(rehashed, public_key_b64(key)) == "bad_signature"


def test_malformed_messages(key: Ed25519PrivateKey, message: dict[str, Any]) -> None:
    pub = public_key_b64(key)
    assert rejected({k: v for k, v in message.items() if k != "sha256"}, pub) == "invalid_message"
    assert rejected(dict(message, schema="model.v2"), pub) == "invalid_message"
    assert rejected(dict(message, onnx_b64="***"), pub) == "bad_base64"
    assert rejected(dict(message, signature="not base64!"), pub) == "bad_base64"
    sig = base64.b64decode(message["signature"])
    truncated = dict(message, signature=base64.b64encode(sig[:40]).decode())
    assert rejected(truncated, pub) == "bad_signature"


def test_signed_but_unusable_models(trained: TrainedModel, key: Ed25519PrivateKey) -> None:
    pub = public_key_b64(key)
    garbage = build_model_message(
        b"not an onnx file",
        name="iforest",
        version="x1",
        feature_names=FEATURE_NAMES,
        threshold=0.6,
        private_key=key,
    )
    assert rejected(garbage, pub) == "invalid_onnx"
    from ml.onnx_export import export_fast

    names = [f"g{i}" for i in range(len(FEATURE_NAMES))]
    other_features = build_model_message(
        export_fast(trained.model, names),
        name="iforest",
        version="x2",
        feature_names=names,
        threshold=0.6,
        private_key=key,
    )
    assert rejected(other_features, pub) == "feature_mismatch"
    assert load_model(other_features, pub, expected_features=None).feature_names == tuple(names)
    short = build_model_message(
        export_fast(trained.model, FEATURE_NAMES),
        name="iforest",
        version="x3",
        feature_names=FEATURE_NAMES[:-1],
        threshold=0.6,
        private_key=key,
    )
    with pytest.raises(ModelRejected) as info:
        load_model(short, pub, expected_features=None)
    assert info.value.reason == "feature_mismatch"


def test_signed_bytes_layout(message: dict[str, Any]) -> None:
    msg = ModelMessage.model_validate(message)
    onnx_bytes = base64.b64decode(message["onnx_b64"])
    blob = signed_bytes(msg, onnx_bytes)
    meta = canonical_metadata(msg)
    assert blob == SIGNING_CONTEXT + len(meta).to_bytes(8, "big") + meta + onnx_bytes
    parsed = json.loads(meta)
    assert sorted(parsed) == sorted(
        ["name", "version", "created_at", "sha256", "feature_names", "threshold"]
    )
    assert parsed["created_at"] == "2026-03-01T18:30:00Z"
    assert b" " not in meta
    # The same instant written differently on the wire signs the same bytes.
    other = ModelMessage.model_validate(dict(message, created_at="2026-03-01T19:30:00+01:00"))
    assert canonical_metadata(other) == meta


def test_keypair_files_and_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "keys" / "signing.pem"
    public = tmp_path / "keys" / "signing.pub"
    pub = generate_keypair(private, public)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert public.read_text().strip() == pub
    with pytest.raises(FileExistsError):
        generate_keypair(private, public)
    assert public_key_b64(load_private_key(private)) == pub
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_FILE_ENV, str(private))
    assert public_key_b64(load_private_key()) == pub
    monkeypatch.delenv(KEY_FILE_ENV)
    seed = os.urandom(32)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(seed).decode())
    expected = public_key_b64(Ed25519PrivateKey.from_private_bytes(seed))
    assert public_key_b64(load_private_key()) == expected
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LookupError):
        load_private_key()
