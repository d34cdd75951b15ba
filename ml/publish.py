"""Build and sign ``model.v1`` messages; generate the signing keypair.

The private key never goes into the repository: it is read from a file given explicitly, or from
``EIOT_MODEL_SIGNING_KEY_FILE`` (path to the PEM file), or from ``EIOT_MODEL_SIGNING_KEY`` (the
PEM text, or the raw 32-byte seed in base64). Agents are configured with the public key (raw
32 bytes, base64), which :func:`generate_keypair` writes next to the private key.

    python -m ml.publish keygen --private var/keys/model_signing.pem --public var/keys/model.pub
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.signing import signed_bytes, withdrawal_signed_bytes
from edge_agent.wire import ModelMessage, ModelWithdrawal
from ml.train import TrainedModel

KEY_FILE_ENV = "EIOT_MODEL_SIGNING_KEY_FILE"
KEY_ENV = "EIOT_MODEL_SIGNING_KEY"


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode("ascii")


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> str:
    """Write a new Ed25519 private key (PEM PKCS8, mode 0600) and its public key (base64 of the
    raw 32 bytes, one line). Refuses to overwrite an existing private key. Returns the public
    key in base64."""
    private_path = Path(private_path)
    public = Path(public_path) if public_path is not None else private_path.with_suffix(".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub = public_key_b64(key)
    public.parent.mkdir(parents=True, exist_ok=True)
    public.write_text(pub + "\n", encoding="ascii")
    return pub


def ensure_keypair(private_path: str | Path, public_path: str | Path | None = None) -> str:
    """:func:`generate_keypair` when ``private_path`` does not exist; else its public key is
    written again from it (provisioning run twice keeps its key and the agents' copy of it)."""
    private_path = Path(private_path)
    if not private_path.exists():
        return generate_keypair(private_path, public_path)
    public = Path(public_path) if public_path is not None else private_path.with_suffix(".pub")
    pub = public_key_b64(load_private_key(private_path))
    public.parent.mkdir(parents=True, exist_ok=True)
    public.write_text(pub + "\n", encoding="ascii")
    return pub


def _from_text(data: bytes) -> Ed25519PrivateKey:
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(stripped, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key is not an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing key is neither PEM nor a base64 32-byte seed") from None
    if len(seed) != 32:
        raise ValueError("signing key is neither PEM nor a base64 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_private_key(path: str | Path | None = None) -> Ed25519PrivateKey:
    """The signing key from ``path``, else ``$EIOT_MODEL_SIGNING_KEY_FILE``, else
    ``$EIOT_MODEL_SIGNING_KEY``."""
    if path is None:
        path = os.environ.get(KEY_FILE_ENV) or None
    if path is not None:
        return _from_text(Path(path).read_bytes())
    inline = os.environ.get(KEY_ENV)
    if inline:
        return _from_text(inline.encode("ascii"))
    raise LookupError(f"no signing key: pass a path or set {KEY_FILE_ENV} or {KEY_ENV}")


def build_model_message(
    onnx_bytes: bytes,
    *,
    name: str,
    version: str,
    feature_names: Sequence[str],
    threshold: float,
    private_key: Ed25519PrivateKey,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """A signed ``model.v1`` message (JSON-ready dict) for ``onnx_bytes``."""
    unsigned = ModelMessage(
        name=name,
        version=version,
        created_at=created_at or datetime.now(UTC),
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        feature_names=list(feature_names),
        threshold=float(threshold),
        onnx_b64=base64.b64encode(onnx_bytes).decode("ascii"),
        signature="",
    )
    # Round-trip through JSON first so the signed metadata is exactly what agents will parse.
    wire = ModelMessage.model_validate(unsigned.to_json_dict())
    signature = private_key.sign(signed_bytes(wire, onnx_bytes))
    message = wire.to_json_dict()
    message["signature"] = base64.b64encode(signature).decode("ascii")
    return message


def build_withdrawal(
    name: str, *, private_key: Ed25519PrivateKey, created_at: datetime | None = None
) -> dict[str, Any]:
    """A signed ``model_withdrawal.v1``: gateways stop using ``name`` and accept no model of
    that name created before ``created_at`` (now by default)."""
    unsigned = ModelWithdrawal(name=name, created_at=created_at or datetime.now(UTC), signature="")
    wire = ModelWithdrawal.model_validate(unsigned.to_json_dict())
    message = wire.to_json_dict()
    message["signature"] = base64.b64encode(private_key.sign(withdrawal_signed_bytes(wire))).decode(
        "ascii"
    )
    return message


def message_from_trained(
    trained: TrainedModel,
    *,
    name: str,
    version: str,
    private_key: Ed25519PrivateKey,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Export ``trained`` with the fast ONNX graph (calibrated when it can be) and sign it."""
    return build_model_message(
        trained.onnx(),
        name=name,
        version=version,
        feature_names=trained.feature_names,
        threshold=trained.published_threshold,
        private_key=private_key,
        created_at=created_at,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.publish")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="generate the model signing keypair")
    keygen.add_argument("--private", required=True, help="private key file (PEM, created 0600)")
    keygen.add_argument("--public", default=None, help="public key file (base64 raw key)")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        pub = generate_keypair(args.private, args.public)
        print(f"public key (configure agents with it): {pub}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
