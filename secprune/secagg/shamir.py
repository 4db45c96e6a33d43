"""t-of-h Shamir secret sharing (Shamir 1979) over the prime field GF(p), p = 2^31 - 1, vectorised in numpy.

Bonawitz et al. (CCS 2017, Sec. 4, round "ShareKeys") Shamir-share each client's self-mask seed b_u and mask
key seed s_u among its share holders.  A 16-byte seed is cut into ``LIMBS`` = 5 limbs of 30 bits (the last
holds 8), and every limb is shared independently with its own random polynomial of degree t - 1; a share is
therefore 5 field elements, ``SHARE_BYTES`` = 20 bytes.  Products of two field elements stay below 2^62, so a
whole batch of secrets is evaluated at every holder's x-coordinate with uint64 numpy arithmetic (Horner's
rule, one vector operation per coefficient), and reconstruction is one weighted sum with Lagrange weights
at 0 that are cached per set of x-coordinates.  Any t - 1 shares of a limb are uniform and independent of
it (perfect secrecy), and the polynomial coefficients are drawn by rejection sampling from ``os.urandom``,
so they are exactly uniform on GF(p).

Holders use x = (client id) + 1, so every owner's shares held by one client sit at the same x and the
server's Lagrange weights are computed once per set of responders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["P", "LIMBS", "SECRET_BYTES", "SHARE_BYTES", "split", "combine", "lagrange_at_zero",
           "shares_to_bytes", "shares_from_bytes"]

P = (1 << 31) - 1  # Mersenne prime M31
LIMBS = 5
LIMB_BITS = 30
SECRET_BYTES = 16
SHARE_BYTES = 4 * LIMBS
_LIMB_MASK = (1 << LIMB_BITS) - 1


def _uniform_field(shape: tuple[int, ...]) -> np.ndarray:
    """Elements of GF(p) drawn exactly uniformly: 31 random bits each, redrawing the single value p."""
    count = int(np.prod(shape))
    out = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.uint64) & np.uint64(P)
    bad = out == P
    while bad.any():
        out[bad] = np.frombuffer(os.urandom(4 * int(bad.sum())), dtype="<u4").astype(np.uint64) & np.uint64(P)
        bad = out == P
    return out.reshape(shape)


def _to_limbs(secrets: np.ndarray) -> np.ndarray:
    """(S, 16) uint8 little-endian integers -> (S, LIMBS) uint64 limbs of 30 bits."""
    words = np.ascontiguousarray(secrets, dtype=np.uint8).view("<u8").astype(np.uint64)
    lo, hi = words[:, 0], words[:, 1]
    m = np.uint64(_LIMB_MASK)
    return np.stack([lo & m, (lo >> np.uint64(30)) & m,
                     ((lo >> np.uint64(60)) | (hi << np.uint64(4))) & m,
                     (hi >> np.uint64(26)) & m, hi >> np.uint64(56)], axis=1)


def _from_limbs(limbs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_limbs`; raises ``ValueError`` if a limb is out of range (inconsistent shares)."""
    limbs = limbs.astype(np.uint64)
    if (limbs[:, :4] > _LIMB_MASK).any() or (limbs[:, 4] > 0xFF).any():
        raise ValueError("shares: the reconstructed value is not a 16-byte secret (inconsistent shares)")
    lo = limbs[:, 0] | (limbs[:, 1] << np.uint64(30)) | ((limbs[:, 2] & np.uint64(0xF)) << np.uint64(60))
    hi = (limbs[:, 2] >> np.uint64(4)) | (limbs[:, 3] << np.uint64(26)) | (limbs[:, 4] << np.uint64(56))
    return np.stack([lo, hi], axis=1).astype("<u8").view(np.uint8).reshape(-1, SECRET_BYTES)


def split(secrets: np.ndarray | Sequence[bytes], *, threshold: int, xs: Sequence[int]) -> np.ndarray:
    """Shares of S 16-byte secrets at the x-coordinates ``xs``: a (len(xs), S, LIMBS) uint64 array.

    Any ``threshold`` of the rows recover every secret (:func:`combine`); fewer reveal nothing.
    """
    if not isinstance(secrets, np.ndarray):
        secrets = np.frombuffer(b"".join(secrets), np.uint8).reshape(-1, SECRET_BYTES) if secrets else \
            np.zeros((0, SECRET_BYTES), np.uint8)
    if secrets.ndim != 2 or secrets.shape[1] != SECRET_BYTES:
        raise ValueError(f"secrets: expected an (S, {SECRET_BYTES}) byte array, got shape {secrets.shape}")
    xs_arr = np.asarray(list(xs), dtype=np.int64)
    if xs_arr.size == 0 or (xs_arr < 1).any() or (xs_arr >= P).any() or len(set(xs_arr.tolist())) != xs_arr.size:
        raise ValueError(f"xs: expected distinct x-coordinates in 1..{P - 1}")
    if not 1 <= threshold <= xs_arr.size:
        raise ValueError(f"threshold: expected 1 <= threshold <= {xs_arr.size} holders, got {threshold}")
    coeffs = _uniform_field((threshold - 1, secrets.shape[0], LIMBS))
    x = xs_arr.astype(np.uint64)[:, None, None]
    acc = np.zeros((xs_arr.size, secrets.shape[0], LIMBS), np.uint64)
    p = np.uint64(P)
    for j in range(threshold - 2, -1, -1):  # Horner: a_{t-1} x^{t-1} + ... + a_1 x, then + a_0
        acc = (acc + coeffs[j]) * x % p
    return (acc + _to_limbs(secrets)) % p


@lru_cache(maxsize=256)
def _lagrange(xs: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for j, xj in enumerate(xs):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % P
                den = den * (xm - xj) % P
        out.append(num * pow(den, P - 2, P) % P)
    return tuple(out)


def lagrange_at_zero(xs: Sequence[int]) -> np.ndarray:
    """Weights w_j with f(0) = sum_j w_j f(x_j) for any polynomial of degree < len(xs) (cached per set)."""
    key = tuple(int(x) for x in xs)
    if len(set(key)) != len(key) or any(not 1 <= x < P for x in key):
        raise ValueError(f"xs: expected distinct x-coordinates in 1..{P - 1}")
    return np.asarray(_lagrange(key), dtype=np.uint64)


def combine(*, xs: Sequence[int], shares: np.ndarray) -> np.ndarray:
    """The (S, 16) secrets from shares (len(xs), S, LIMBS) at ``xs`` (exactly ``threshold`` rows is enough)."""
    shares = np.asarray(shares, dtype=np.uint64)
    if shares.ndim != 3 or shares.shape[0] != len(xs) or shares.shape[2] != LIMBS:
        raise ValueError(f"shares: expected shape ({len(xs)}, S, {LIMBS}), got {shares.shape}")
    if (shares >= P).any():
        raise ValueError("shares: a share is not an element of GF(p)")
    w = lagrange_at_zero(xs)[:, None, None]
    limbs = np.sum(w * shares % np.uint64(P), axis=0) % np.uint64(P)
    return _from_limbs(limbs)


def shares_to_bytes(shares: np.ndarray) -> bytes:
    """(..., LIMBS) field elements as big-endian uint32s, ``SHARE_BYTES`` per share."""
    return np.ascontiguousarray(shares, dtype=">u4").tobytes()


def shares_from_bytes(data: bytes, count: int) -> np.ndarray:
    """``count`` shares from :func:`shares_to_bytes` output: (count, LIMBS) uint64."""
    if len(data) != count * SHARE_BYTES:
        raise ValueError(f"shares: expected {count * SHARE_BYTES} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=">u4").astype(np.uint64).reshape(count, LIMBS)
