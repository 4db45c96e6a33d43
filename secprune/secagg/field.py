"""Vectorised arithmetic modulo a prime p < 2^50, and the number-theoretic transform, in numpy.

The input-validation proofs (:mod:`secprune.secagg.flp`) work in the BFV plain modulus t of the HE backend (a
prime = 1 mod 2N, about 2^40), so that the proof's shares and the encrypted slots live in one field.  Products
of two 40-bit residues need 80 bits: ``mul`` computes them exactly with the classic floating-point quotient
trick (the 64-bit wrap-around product minus the rounded quotient times p is exact up to one correction, since
the float64 quotient of numbers below 2^100 errs by less than one unit while p < 2^50).  ``ntt`` / ``intt`` are
iterative radix-2 transforms over the subgroup of order n (a power of two dividing p - 1), batched along the
last axis.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["Field"]


class Field:
    """Z_p for a prime p < 2^50 with a multiplicative subgroup of order 2^s (s >= 1)."""

    def __init__(self, p: int) -> None:
        if not 3 <= p < 1 << 50:
            raise ValueError(f"field: expected a prime below 2^50, got {p}")
        self.p = int(p)
        self._p = np.uint64(p)
        self._pf = float(p)
        two_adic, rest = 0, p - 1
        while rest % 2 == 0:
            rest //= 2
            two_adic += 1
        self.two_adicity = two_adic
        self._gen = self._find_generator()

    # -- scalars ---------------------------------------------------------------------------------------------
    def _find_generator(self) -> int:
        """A generator of the 2-Sylow subgroup (order 2^two_adicity)."""
        odd = (self.p - 1) >> self.two_adicity
        for g in range(2, 1000):
            h = pow(g, odd, self.p)
            if pow(h, 1 << (self.two_adicity - 1), self.p) == self.p - 1:
                return h
        raise ValueError(f"field: no 2-adic generator found for p={self.p}")

    def root(self, n: int) -> int:
        """A primitive n-th root of unity (n a power of two dividing p - 1)."""
        if n & (n - 1) or n < 1 or n.bit_length() - 1 > self.two_adicity:
            raise ValueError(f"field: no subgroup of order {n} mod {self.p}")
        return pow(self._gen, (1 << self.two_adicity) // n, self.p)

    def inv(self, a: int) -> int:
        return pow(int(a) % self.p, self.p - 2, self.p)

    # -- vectors ---------------------------------------------------------------------------------------------
    def asfield(self, values) -> np.ndarray:
        """uint64 residues of integer ``values`` (negative ones wrapped)."""
        a = np.asarray(values)
        if a.dtype == np.uint64:
            return a % self._p
        return np.mod(a.astype(np.int64), self.p).astype(np.uint64)

    def uniform(self, words: np.ndarray) -> np.ndarray:
        """Residues from random 64-bit words, by rejection below the largest multiple of p (callers pass enough
        words: the rejected fraction is below 2^-13 for p >= 2^37 and exactly computed here)."""
        limit = np.uint64(((1 << 64) // self.p) * self.p)
        return (words[words < limit] % self._p)

    # Reductions without masks: of r and r -/+ p (uint64, wrapping), the residue is the smaller.
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        s = np.add(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
        return np.minimum(s, s - self._p, out=s)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r = np.subtract(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))  # r + p: the residue
        return np.minimum(r, r + self._p, out=r)

    def neg(self, a: np.ndarray) -> np.ndarray:
        return np.where(a == 0, a, self._p - a)

    def mul(self, a: np.ndarray, b: np.ndarray, b_over_p: np.ndarray | None = None) -> np.ndarray:
        """a * b mod p for residues a, b (uint64 arrays or ints), exactly.  ``b_over_p`` (b / p as float64,
        for a constant b such as a twiddle) saves a conversion and a division."""
        a = np.asarray(a, dtype=np.uint64)
        b = np.asarray(b, dtype=np.uint64)
        ratio = b.astype(np.float64) / self._pf if b_over_p is None else b_over_p
        q = np.multiply(a, ratio, dtype=np.float64)  # a b / p to within 1 (both < 2^50)
        r = np.multiply(a, b, dtype=np.uint64)
        r -= q.astype(np.uint64) * self._p  # exact modulo 2^64; the true remainder lies in (-p, 2p)
        t = r + self._p
        np.minimum(r, t, out=r)
        t -= self._p
        t -= self._p
        return np.minimum(r, t, out=r)

    def sum(self, a: np.ndarray, axis: int = -1) -> np.ndarray:
        """The sum of residues mod p along ``axis``, reduced in blocks (8192 residues < 2^50 stay below 2^63)."""
        a = np.moveaxis(np.asarray(a, dtype=np.uint64), axis, -1)
        total = np.zeros(a.shape[:-1], np.uint64)
        for start in range(0, a.shape[-1], 1 << 13):
            total = (total + a[..., start:start + (1 << 13)].sum(axis=-1, dtype=np.uint64) % self._p) % self._p
        return total

    def dot(self, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        """sum(a * b) mod p along ``axis``."""
        return self.sum(self.mul(a, b), axis=axis)

    def powers(self, x: int, n: int) -> np.ndarray:
        """x^0, ..., x^(n-1)."""
        out = np.empty(n, np.uint64)
        acc = 1
        for i in range(n):
            out[i] = acc
            acc = acc * x % self.p
        return out

    # -- the number-theoretic transform ----------------------------------------------------------------------
    @lru_cache(maxsize=32)  # noqa: B019 - a handful of sizes per field, fields live for the process
    def _twiddles(self, n: int, inverse: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per stage: the twiddles and their ratios to p (float64), for :meth:`mul`."""
        w = self.root(n)
        if inverse:
            w = self.inv(w)
        out, length = [], 2
        while length <= n:
            tw = self.powers(pow(w, n // length, self.p), length // 2)
            out.append((tw, tw.astype(np.float64) / self._pf))
            length *= 2
        return out

    @lru_cache(maxsize=32)  # noqa: B019
    def _bit_reverse(self, n: int) -> np.ndarray:
        bits = n.bit_length() - 1
        return np.array([int(f"{i:0{bits}b}"[::-1], 2) if bits else 0 for i in range(n)])

    def ntt(self, a: np.ndarray, *, inverse: bool = False) -> np.ndarray:
        """Evaluations at the n-th roots of unity (w^0, w^1, ...) of the polynomials whose coefficients lie
        along the last axis (n a power of two); ``inverse`` interpolates back (divided by n)."""
        a = np.asarray(a, dtype=np.uint64)
        n = a.shape[-1]
        if n & (n - 1):
            raise ValueError(f"ntt: length {n} is not a power of two")
        x = a[..., self._bit_reverse(n)]
        lead = x.shape[:-1]
        out = np.empty_like(x)
        for stage, (tw, ratio) in enumerate(self._twiddles(n, inverse)):
            half = 1 << stage
            x4 = x.reshape(*lead, n // (2 * half), 2, half)
            o4 = out.reshape(*lead, n // (2 * half), 2, half)
            odd = self.mul(x4[..., 1, :], tw, ratio)
            o4[..., 0, :] = self.add(x4[..., 0, :], odd)
            o4[..., 1, :] = self.sub(x4[..., 0, :], odd)
            x, out = out, x
        if inverse:
            x = self.mul(x, np.uint64(self.inv(n)))
        return x

    def intt(self, a: np.ndarray) -> np.ndarray:
        return self.ntt(a, inverse=True)
