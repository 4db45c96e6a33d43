"""Slot packing for BFV sums, and the uniform masks that keep single uploads from the key holder.

Packing: with B = n * max_value + 1 (a sum of n entries never reaches B) and plain modulus t, each of the N
batching slots carries P = max{p : B^p <= t} entries as the digits of slot = sum_j c_j B^j (Horner).  Adding
n such slots adds digit-wise without carries and stays below B^P <= t, so decoding the base-B digits is exact.

Masks: a client adds m_i, uniform on Z_t per slot, to its encoded slots before encrypting; m_i comes from a
key the client shares with the server only (X25519 + HKDF, then AES-CTR words reduced by rejection sampling,
so exactly uniform).  The key holder, who decrypts, therefore never sees an unmasked vector, even when it
adds the signed uploads itself; the server removes sum_i m_i from the decrypted sum.
"""

from __future__ import annotations

import numpy as np

from secprune.secagg.prg import MaskPRG

__all__ = ["is_prime", "batching_prime", "slot_packing", "encode_slots", "decode_slots", "uniform_mod"]


_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
_PSI_12 = 318_665_857_834_031_151_167_461  # the least strong pseudoprime to all of _MR_BASES


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin below 3.18e23 (> 2^78): the first twelve primes as bases witness every
    composite below psi_12 = 318,665,857,834,031,151,167,461 (Sorenson & Webster 2017, Math. Comp. 86)."""
    if n >= _PSI_12:
        raise ValueError(f"is_prime: {n} is beyond the deterministic bound psi_12 (about 2^78)")
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime(*, bits: int, poly_modulus_degree: int) -> int:
    """Largest prime t < 2^bits with t = 1 mod 2N, so BFV batching gives N slots (cf. SEAL's
    PlainModulus::Batching)."""
    step = 2 * poly_modulus_degree
    t = ((1 << bits) - 1) // step * step + 1
    while t > step:
        if is_prime(t):
            return t
        t -= step
    raise ValueError(f"plain_modulus_bits: no batching prime below 2^{bits} for N={poly_modulus_degree}")


def slot_packing(*, n_clients: int, max_value: int, plain_modulus: int) -> tuple[int, int]:
    """(B, P): digit base B = n * max_value + 1 and the largest P with B^P <= plain_modulus."""
    base = n_clients * max_value + 1
    per_slot = 0
    while base ** (per_slot + 1) <= plain_modulus and per_slot < 62:
        per_slot += 1
    if per_slot == 0:
        raise ValueError(f"plain_modulus_bits: plain modulus {plain_modulus} cannot hold a sum of "
                         f"{n_clients} entries <= {max_value}; raise plain_modulus_bits")
    return base, per_slot


def encode_slots(vector: np.ndarray, *, base: int, per_slot: int) -> np.ndarray:
    """Entries -> int64 slots, ``per_slot`` base-``base`` digits each (entry j of a group is digit j)."""
    n = vector.size
    slots = -(-n // per_slot)
    digits = np.zeros(slots * per_slot, np.int64)
    digits[:n] = vector
    digits = digits.reshape(slots, per_slot)
    out = np.zeros(slots, np.int64)
    for j in range(per_slot - 1, -1, -1):  # Horner: digit 0 is least significant
        out *= base
        out += digits[:, j]
    return out


def decode_slots(slots: np.ndarray, *, base: int, per_slot: int, n: int) -> np.ndarray:
    """Inverse of :func:`encode_slots` (digit-wise, on the summed slots)."""
    rest = slots.astype(np.int64, copy=True)
    out = np.empty((rest.size, per_slot), np.int64)
    for j in range(per_slot):
        rest, out[:, j] = np.divmod(rest, base)
    return out.ravel()[:n]


def uniform_mod(key: bytes, *, count: int, modulus: int, prg: MaskPRG | None = None) -> np.ndarray:
    """``count`` values exactly uniform on Z_modulus (modulus < 2^63) from the PRG stream of ``key``.

    64-bit words at or above the largest multiple of ``modulus`` are skipped (rejection sampling); the stream
    is read in order, so the client and the server derive the same values.
    """
    if not 1 < modulus < 1 << 63:
        raise ValueError(f"modulus: expected 2..2^63, got {modulus}")
    prg = prg or MaskPRG()
    limit = np.uint64(((1 << 64) // modulus) * modulus)
    out, have, offset = [], 0, 0
    while have < count:
        want = count - have + 64 + (count - have) // 1024
        words = prg.expand(key, want, np.uint64, offset=offset)
        offset += want
        keep = words[words < limit]
        out.append(keep[:count - have])
        have += min(keep.size, count - have)
    return (np.concatenate(out) if out else np.zeros(0, np.uint64)) % np.uint64(modulus)
