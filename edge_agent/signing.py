"""Signatures of the messages central sends gateways (``model.v1``, ``model_withdrawal.v1``):
Ed25519, verified with the public key the agent is configured with. Standard library and the
pure-Python verifier only: an agent checks a withdrawal without loading onnxruntime.

Signed bytes of a ``model.v1`` (see ``edge_agent.model``)::

    b"eiot.model.v1\\x00" + len(meta).to_bytes(8, "big") + meta + onnx_bytes

Signed bytes of a ``model_withdrawal.v1``::

    b"eiot.model_withdrawal.v1\\x00" + canonical JSON of {name, created_at}

(canonical JSON: keys sorted, no whitespace, ASCII, times as the wire writes them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from edge_agent import ed25519
from edge_agent.wire import ModelMessage, ModelWithdrawal, explain

SIGNING_CONTEXT = b"eiot.model.v1\x00"
WITHDRAWAL_CONTEXT = b"eiot.model_withdrawal.v1\x00"
SIGNED_FIELDS = ("name", "version", "created_at", "sha256", "feature_names", "threshold")
MAX_MODEL_BYTES = 32 * 1024 * 1024


class ModelRejected(Exception):
    """A model message that must not be used. ``reason`` is a short machine-readable word:
    ``invalid_message``, ``bad_base64``, ``too_large``, ``checksum_mismatch``, ``bad_signature``,
    ``bad_public_key``, ``feature_mismatch``, ``invalid_onnx``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def canonical_metadata(message: ModelMessage) -> bytes:
    meta = message.model_dump(mode="json", include=set(SIGNED_FIELDS))
    text = json.dumps(
        meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def signed_bytes(message: ModelMessage, onnx_bytes: bytes) -> bytes:
    """The exact byte string the model signature covers (see module docstring)."""
    meta = canonical_metadata(message)
    return SIGNING_CONTEXT + len(meta).to_bytes(8, "big") + meta + onnx_bytes


def parse_public_key(value: str | bytes) -> bytes:
    """Raw 32-byte Ed25519 public key from 32 raw bytes, 64 hex chars or base64 text."""
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            try:
                raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raw = None
    if raw is None or len(raw) != 32:
        raise ModelRejected("bad_public_key", "expected 32 raw bytes as hex or base64")
    return raw


def _b64(text: str, what: str, limit: int) -> bytes:
    if len(text) > limit * 4 // 3 + 8:
        raise ModelRejected("too_large", f"{what} over {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelRejected("bad_base64", f"{what}: {exc}") from None


def verify_message(
    message: ModelMessage | Mapping[str, Any], public_key: str | bytes
) -> tuple[ModelMessage, bytes]:
    """Check a ``model.v1`` message; return it validated with its ONNX bytes.

    Raises :class:`ModelRejected` on a malformed message, a checksum mismatch or a bad signature.
    """
    key = parse_public_key(public_key)
    if isinstance(message, ModelMessage):
        msg = message
    else:
        try:
            msg = ModelMessage.model_validate(dict(message))
        except ValidationError as exc:
            raise ModelRejected("invalid_message", explain(exc)) from None
    onnx_bytes = _b64(msg.onnx_b64, "onnx_b64", MAX_MODEL_BYTES)
    if len(onnx_bytes) > MAX_MODEL_BYTES:
        raise ModelRejected("too_large", f"model of {len(onnx_bytes)} bytes")
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != msg.sha256:
        raise ModelRejected("checksum_mismatch", f"sha256 of onnx is {digest}")
    signature = _b64(msg.signature, "signature", 128)
    if not ed25519.verify(key, signed_bytes(msg, onnx_bytes), signature):
        raise ModelRejected("bad_signature", "Ed25519 signature does not verify")
    return msg, onnx_bytes


def withdrawal_signed_bytes(message: ModelWithdrawal) -> bytes:
    """The exact byte string a withdrawal's signature covers (see module docstring)."""
    meta = message.model_dump(mode="json", include={"name", "created_at"})
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return WITHDRAWAL_CONTEXT + text.encode("ascii")


def verify_withdrawal(
    message: ModelWithdrawal | Mapping[str, Any], public_key: str | bytes
) -> ModelWithdrawal:
    """Check a ``model_withdrawal.v1``; raises :class:`ModelRejected` if it is not central's."""
    key = parse_public_key(public_key)
    try:
        msg = (
            message
            if isinstance(message, ModelWithdrawal)
            else ModelWithdrawal.model_validate(dict(message))
        )
    except ValidationError as exc:
        raise ModelRejected("invalid_message", explain(exc)) from None
    signature = _b64(msg.signature, "signature", 128)
    if not ed25519.verify(key, withdrawal_signed_bytes(msg), signature):
        raise ModelRejected("bad_signature", "Ed25519 signature does not verify")
    return msg
