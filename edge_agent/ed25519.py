"""Ed25519 signature verification (RFC 8032, section 5.1), pure Python, stdlib only.

The gateway verifies signed model messages but must not need the ``cryptography`` wheel, so this
module implements the verification half of PureEdDSA for edwards25519 from the RFC's math:

* field GF(p), p = 2**255 - 19; twisted Edwards curve -x**2 + y**2 = 1 + d*x**2*y**2;
* points in extended homogeneous coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, x*y = T/Z,
  with the RFC's complete addition and doubling formulas;
* point decoding per 5.1.3 (rejects y >= p, non-squares and the "negative zero" x);
* the verification of 5.1.7 with the cofactored equation [8][S]B = [8]R + [8][k]A, and S < L.

Verification handles only public data, so constant time is not a concern here. Signing lives
centrally (``ml.publish``, with ``cryptography``).
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod p

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)

_IDENTITY: Point = (0, 1, 1, 0)


def _recover_x(y: int, sign: int) -> int | None:
    """x from y and the sign bit (RFC 8032, 5.1.3 steps 2-4); None when there is none."""
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    # Candidate root x = u v^3 (u v^7)^((p-5)/8).
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    vx2 = (v * x * x) % P
    if vx2 == u:
        pass
    elif vx2 == (-u) % P:
        x = (x * SQRT_M1) % P
    else:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _decode_point(data: bytes) -> Point | None:
    if len(data) != 32:
        return None
    value = int.from_bytes(data, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, (x * y) % P)


def _add(p1: Point, p2: Point) -> Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = ((y1 - x1) * (y2 - x2)) % P
    b = ((y1 + x1) * (y2 + x2)) % P
    c = (2 * t1 * t2 * D) % P
    dd = (2 * z1 * z2) % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return ((e * f) % P, (g * h) % P, (f * g) % P, (e * h) % P)


def _double(p1: Point) -> Point:
    x1, y1, z1, _ = p1
    a = (x1 * x1) % P
    b = (y1 * y1) % P
    c = (2 * z1 * z1) % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return ((e * f) % P, (g * h) % P, (f * g) % P, (e * h) % P)


def _multiply(scalar: int, point: Point) -> Point:
    result = _IDENTITY
    addend = point
    while scalar > 0:
        if scalar & 1:
            result = _add(result, addend)
        addend = _double(addend)
        scalar >>= 1
    return result


def _equal(p1: Point, p2: Point) -> bool:
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = p2
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


_BASE_Y = (4 * pow(5, P - 2, P)) % P
_BASE_X = _recover_x(_BASE_Y, 0)
assert _BASE_X is not None
BASE: Point = (_BASE_X, _BASE_Y, 1, (_BASE_X * _BASE_Y) % P)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` under ``public_key``
    (32-byte encoded point). Never raises on malformed input: returns False."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        return False
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        return False
    a_point = _decode_point(bytes(public_key))
    r_point = _decode_point(bytes(signature[:32]))
    if a_point is None or r_point is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    digest = hashlib.sha512(bytes(signature[:32]) + bytes(public_key) + bytes(message)).digest()
    k = int.from_bytes(digest, "little") % L
    left = _multiply(8 * s, BASE)
    right = _multiply(8, _add(r_point, _multiply(k, a_point)))
    return _equal(left, right)
