from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import ed25519

# RFC 8032, section 7.1, TEST 1 and TEST 2 (public key, message, signature).
RFC_VECTORS = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def signer() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, raw_public(key)


@pytest.mark.parametrize(("pub", "msg", "sig"), RFC_VECTORS)
def test_rfc8032_vectors(pub: str, msg: str, sig: str) -> None:
    assert ed25519.verify(bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig))
    assert not ed25519.verify(bytes.fromhex(pub), bytes.fromhex(msg) + b"\0", bytes.fromhex(sig))


@settings(max_examples=15, deadline=None)
@given(message=st.binary(max_size=300))
def test_signatures_from_cryptography_verify(message: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    assert ed25519.verify(raw_public(key), message, key.sign(message))


def test_large_message(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    message = os.urandom(1_000_000)
    assert ed25519.verify(pub, message, key.sign(message))


def test_wrong_key(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, _ = signer
    other = raw_public(Ed25519PrivateKey.generate())
    assert not ed25519.verify(other, b"model", key.sign(b"model"))


def test_tampered_message(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    message = bytearray(b"threshold=0.61;" * 20)
    signature = key.sign(bytes(message))
    for position in (0, 7, len(message) - 1):
        tampered = bytearray(message)
        tampered[position] ^= 0x01
        assert not ed25519.verify(pub, bytes(tampered), signature)
    assert not ed25519.verify(pub, bytes(message[:-1]), signature)
    assert not ed25519.verify(pub, bytes(message) + b"x", signature)


def test_tampered_or_truncated_signature(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    signature = key.sign(b"payload")
    assert ed25519.verify(pub, b"payload", signature)
    for position in (0, 31, 32, 63):
        bad = bytearray(signature)
        bad[position] ^= 0x40
        assert not ed25519.verify(pub, b"payload", bytes(bad))
    assert not ed25519.verify(pub, b"payload", signature[:63])
    assert not ed25519.verify(pub, b"payload", signature[:32])
    assert not ed25519.verify(pub, b"payload", signature + b"\0")
    assert not ed25519.verify(pub, b"payload", b"")


def test_non_canonical_s_is_rejected(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    signature = key.sign(b"payload")
    s = int.from_bytes(signature[32:], "little")
    # S + L is the same scalar mod L (the equation would hold) but RFC 8032 requires S < L.
    malleated = signature[:32] + (s + ed25519.L).to_bytes(32, "little")
    assert not ed25519.verify(pub, b"payload", malleated)


def test_malformed_public_keys(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    signature = key.sign(b"payload")
    assert not ed25519.verify(pub[:31], b"payload", signature)
    assert not ed25519.verify(pub + b"\0", b"payload", signature)
    assert not ed25519.verify(b"", b"payload", signature)
    # y >= p is a non-canonical encoding: decoding must fail.
    assert not ed25519.verify((ed25519.P + 1).to_bytes(32, "little"), b"payload", signature)
    # A y with no x on the curve.
    y = next(y for y in range(2, 100) if ed25519._recover_x(y, 0) is None)
    assert not ed25519.verify(y.to_bytes(32, "little"), b"payload", signature)
    # x = 0 with the sign bit set ("negative zero") is invalid.
    assert not ed25519.verify((1 | (1 << 255)).to_bytes(32, "little"), b"payload", signature)


def test_non_bytes_inputs_return_false(signer: tuple[Ed25519PrivateKey, bytes]) -> None:
    key, pub = signer
    signature = key.sign(b"x")
    assert not ed25519.verify(pub.hex(), b"x", signature)  # type: ignore[arg-type]
    assert not ed25519.verify(pub, b"x", signature.hex())  # type: ignore[arg-type]


def test_base_point_has_order_l() -> None:
    assert ed25519._equal(ed25519._multiply(ed25519.L, ed25519.BASE), ed25519._IDENTITY)
    assert not ed25519._equal(ed25519._multiply(ed25519.L - 1, ed25519.BASE), ed25519._IDENTITY)
