"""Arithmetic in the ring Z_(2^b) and the b-bit wire format.

Bonawitz et al. (CCS 2017, Sec. 4) mask inputs in Z_R; we take R = 2^b with
``b = ceil(log2(n * max_value + 1))`` (eq. ``ring_bits``) so the sum of ``n`` entries in ``[0, max_value]``
never wraps, and a 64-client 0/1 mask costs 7 bits per entry on the wire.

Vectors are held in the smallest unsigned numpy dtype of at least ``b`` bits; additions wrap modulo that
dtype's width, which is a multiple of 2^b, so a final ``& (2^b - 1)`` yields the result modulo 2^b.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring_bits", "ring_dtype", "ring_mask", "pack", "unpack", "packed_size"]


def ring_bits(*, n_clients: int, max_value: int) -> int:
    """Smallest b with ``n_clients * max_value < 2^b`` (at least 1)."""
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    return max(1, int(n_clients * max_value).bit_length())


def ring_dtype(bits: int) -> np.dtype:
    """Smallest unsigned little-endian dtype holding ``bits`` bits."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must lie in [1, 64], got {bits}")
    for width in (8, 16, 32, 64):
        if bits <= width:
            return np.dtype(f"<u{width // 8}")
    raise AssertionError("unreachable")


def ring_mask(bits: int) -> int:
    """The integer 2^bits - 1."""
    return (1 << bits) - 1


def packed_size(n: int, bits: int) -> int:
    """Bytes taken by ``n`` entries of ``bits`` bits each: ceil(n * bits / 8)."""
    return (n * bits + 7) // 8


def _spans(bits: int) -> list[tuple[int, int, int]]:
    """For a group of 8 entries (= ``bits`` bytes): (entry k, byte m, shift) with shift = 8m - bits*k.

    Entry k occupies bits [bits*k, bits*(k+1)) of the group, little-endian, so it touches the bytes
    bits*k // 8 ... (bits*(k+1) - 1) // 8.
    """
    return [(k, m, 8 * m - bits * k) for k in range(8)
            for m in range(bits * k // 8, (bits * (k + 1) - 1) // 8 + 1)]


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ``values`` (already reduced mod 2^bits) into exactly ceil(n*bits/8) little-endian bytes.

    Vectorised over groups of 8 entries, which fill exactly ``bits`` bytes.
    """
    dtype = ring_dtype(bits)
    values = np.ascontiguousarray(values).ravel()
    n = values.size
    if n == 0:
        return b""
    if bits == 8 * dtype.itemsize:  # whole words: the little-endian bytes themselves
        return values.astype(dtype.newbyteorder("<"), copy=False).tobytes()
    if bits == 4:  # nibbles (up to 15 clients' masks): two entries per byte, low one first
        v = values.astype(np.uint8, copy=False)
        out = v[0::2].copy()
        out[: n // 2] |= v[1::2] << np.uint8(4)
        return out.tobytes()
    pad = (-n) % 8
    v = values.astype(dtype, copy=False)
    if pad:
        v = np.concatenate([v, np.zeros(pad, dtype)])
    v = v.reshape(-1, 8)
    out = np.zeros((v.shape[0], bits), np.uint8)
    for k, m, shift in _spans(bits):
        col = v[:, k]
        part = col >> dtype.type(shift) if shift >= 0 else col << dtype.type(-shift)
        out[:, m] |= part.astype(np.uint8, copy=False) if dtype.itemsize > 1 else part
    return out.tobytes()[: packed_size(n, bits)]


def unpack(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``n`` entries as :func:`ring_dtype` ``(bits)``."""
    dtype = ring_dtype(bits)
    if len(data) != packed_size(n, bits):
        raise ValueError(f"data: expected {packed_size(n, bits)} bytes for {n} entries of {bits} bits, "
                         f"got {len(data)}")
    if n == 0:
        return np.zeros(0, dtype)
    if bits == 8 * dtype.itemsize:
        return np.frombuffer(data, dtype.newbyteorder("<"), count=n).astype(dtype)
    if bits == 4:
        raw = np.frombuffer(data, np.uint8)
        out = np.empty(2 * raw.size, np.uint8)
        out[0::2], out[1::2] = raw & np.uint8(15), raw >> np.uint8(4)
        return out[:n]
    groups = -(-n // 8)
    raw = np.zeros(groups * bits, np.uint8)
    raw[: len(data)] = np.frombuffer(data, np.uint8)
    raw = raw.reshape(groups, bits)
    out = np.zeros((groups, 8), dtype)
    for k, m, shift in _spans(bits):
        byte = raw[:, m].astype(dtype, copy=False)
        out[:, k] |= byte << dtype.type(shift) if shift >= 0 else byte >> dtype.type(-shift)
    if bits < dtype.itemsize * 8:
        out &= dtype.type(ring_mask(bits))
    return out.ravel()[:n]
