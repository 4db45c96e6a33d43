"""A fully linear proof that a secret-shared vector is 0/1, checked by two parties that never see it.

Boneh, Boyle, Corrigan-Gibbs, Gilboa and Ishai (CRYPTO 2019, "Zero-knowledge proofs on secret-shared data via
fully linear PCPs", Sec. 4-5), with the ``ParallelSum(Mul)`` gadget of Prio3 (IETF VDAF draft, Sec. 7.3): the
prover holds x in F^L, the two verifiers hold additive shares of x and of the proof.  Validity is

    V(x) = sum_i rho_i * x_i * (x_i - 1) = 0,

with rho drawn from a hash of both input shares (so the prover commits to x before it learns rho); a vector with
an entry outside {0, 1} gives V != 0 except with probability 1/p.  The circuit is M calls of the gadget
G(a, b) = sum_j a_j b_j over chunks of c entries (a = rho * x, b = x - 1).  The prover interpolates each of the
2c input wires over the M' (a power of two, at least M + 2) roots of unity w^k: random seeds at w^0 and
w^(M+1), the M call values at w^1..w^M, zeros after; it sends the seeds and the coefficients of
P = sum_j W_a_j W_b_j (degree < 2M').  Each verifier evaluates, on its shares, W(r) of every wire and P(r) at two
random points r the prover cannot know, and the output sum_{k=1}^{M} P(w^k) = M'(P_0 + P_M') - P(w^0) -
P(w^(M+1)); the sums of both shares are revealed and the decision is sum_j W_a_j(r) W_b_j(r) = P(r) at both points
and output = 0.  Two seeds per wire make the pair (W(r1), W(r2)) uniform (each wire's two seeds), P(r) is their
function and the output is 0 for an honest prover: nothing of x.  A cheating P passes a point with probability
< 2M'/p, both with < (2M'/p)^2 < 2^-50 at p ~ 2^40 and M' <= 4096.

All arithmetic is in the HE backend's plain modulus t (:class:`~secprune.secagg.field.Field`), so the digit
shares checked here are bound to the encrypted slots by one more linear test (:mod:`secprune.secagg.he`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from secprune.secagg.field import Field

__all__ = ["Shape", "shape_for", "joint_rho", "prove", "query", "decide", "valid_point", "POINTS",
           "verifier_length"]

POINTS = 2  # independent evaluation points
MAX_DOMAIN = 4096  # M' (the proof's polynomials have degree < 2 M', so t = 1 mod 2 M' must hold)
_WIRE_BATCH = 256  # wires interpolated at once (memory: 2 x batch x 2M' residues)


@dataclass(frozen=True)
class Shape:
    """The gadget layout of a vector of ``length`` entries."""

    length: int
    calls: int  # M
    chunk: int  # c entries per call
    domain: int  # M' >= M + 1, a power of two

    @property
    def proof_length(self) -> int:
        return POINTS * 2 * self.chunk + 2 * self.domain  # wire seeds (two per wire), then P's coefficients

    @property
    def seed_positions(self) -> tuple[int, ...]:
        return (0, *range(self.calls + 1, self.calls + POINTS))


def shape_for(length: int) -> Shape:
    """M' a power of two near sqrt(L) (at most ``MAX_DOMAIN``: 2 M' divides t - 1 for every BFV plain modulus)
    and M = M' - ``POINTS`` calls, so the seeds' positions fill the domain and no transform is padded."""
    n = max(length, 1)
    domain = 1 << min(MAX_DOMAIN.bit_length() - 1, max(2, round(np.log2(np.sqrt(n)))))
    calls = max(1, min(domain - POINTS, n))
    chunk = -(-n // calls)
    calls = -(-n // chunk)
    domain = 1 << (calls + POINTS - 1).bit_length()  # a power of two >= calls + POINTS (the seeds' positions)
    return Shape(length=length, calls=calls, chunk=chunk, domain=domain)


def verifier_length(shape: Shape) -> int:
    """Entries of one verifier share: per point, every wire at r and P(r); then the output."""
    return POINTS * (2 * shape.chunk + 1) + 1


def joint_rho(field: Field, *, context: bytes, parts: tuple[bytes, bytes], length: int) -> np.ndarray:
    """rho in F^L from the hashes of both input shares (the prover cannot choose x after seeing rho)."""
    from secprune.secagg.prg import MaskPRG

    key = hashlib.sha256(b"secprune/flp/rho" + context + parts[0] + parts[1]).digest()
    out, offset, prg = [], 0, MaskPRG()
    need = length
    while need > 0:
        words = prg.expand(key, need + 64, np.uint64, offset=offset)
        offset += need + 64
        got = field.uniform(words)[:need]
        out.append(got)
        need -= got.size
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def _grid(field: Field, x: np.ndarray, rho: np.ndarray, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """x and rho padded to M x c (call k, position j): wire a_j at call k is rho x, wire b_j is x - 1."""
    pad = shape.calls * shape.chunk - shape.length
    xs = np.concatenate([field.asfield(x), np.zeros(pad, np.uint64)]).reshape(shape.calls, shape.chunk)
    rs = np.concatenate([rho, np.zeros(pad, np.uint64)]).reshape(shape.calls, shape.chunk)
    return xs, rs


def _wire_block(field: Field, xs: np.ndarray, rs: np.ndarray, cols: slice, *, leader: bool) -> tuple:
    """(a, b) wire values of the wires in ``cols``, shape (wires, M); b's constant -1 from the leader only
    (padded entries: b = -1 but a = 0, so their products stay 0)."""
    x = xs[:, cols].T
    a = field.mul(rs[:, cols].T, x)
    b = field.sub(x, np.uint64(1)) if leader else x
    return a, b


def prove(field: Field, x: np.ndarray, rho: np.ndarray, shape: Shape, seeds: np.ndarray) -> np.ndarray:
    """The proof (wire seeds, coefficients of P) for x in F^L (``seeds``: (2c, POINTS) uniform residues).

    Each wire's values on the M' roots w^k are its table; its values on the coset g w^k (g^2 = w) come from
    one inverse and one forward transform of size M'; P's values on the 2M' roots interleave the two, and one
    inverse transform of size 2M' gives its coefficients."""
    xs, rs = _grid(field, x, rho, shape)
    n, c = shape.domain, shape.chunk
    twist = field.powers(field.root(2 * n), n)  # g^i: coefficients times g^i evaluate on the coset
    twist_ratio = twist.astype(np.float64) / field.p
    on_roots, on_coset = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    for start in range(0, c, _WIRE_BATCH):
        cols = slice(start, min(c, start + _WIRE_BATCH))
        a, b = _wire_block(field, xs, rs, cols, leader=True)
        half = a.shape[0]
        table = np.zeros((2 * half, n), np.uint64)
        table[:half, list(shape.seed_positions)] = seeds[cols]
        table[half:, list(shape.seed_positions)] = seeds[c + cols.start:c + cols.stop]
        table[:half, 1:shape.calls + 1], table[half:, 1:shape.calls + 1] = a, b
        coset = field.ntt(field.mul(field.intt(table), twist, twist_ratio))
        on_roots = field.add(on_roots, field.sum(field.mul(table[:half], table[half:]), axis=0))
        on_coset = field.add(on_coset, field.sum(field.mul(coset[:half], coset[half:]), axis=0))
    evals = np.empty(2 * n, np.uint64)
    evals[0::2], evals[1::2] = on_roots, on_coset  # the 2M'-th roots: w^k = g^(2k), g w^k = g^(2k+1)
    return np.concatenate([seeds.astype(np.uint64).reshape(-1), field.intt(evals)])


def valid_point(field: Field, shape: Shape, r: int) -> bool:
    """A query point outside the interpolation subgroup (there W(r) would be a wire's value, not a mask of it)."""
    return pow(r % field.p, shape.domain, field.p) != 1


def _lagrange(field: Field, shape: Shape, r: int) -> np.ndarray:
    """Weights of the M' values at w^k giving a degree < M' polynomial at r: w^k (r^M' - 1) / (M' (r - w^k))."""
    n = shape.domain
    points = field.powers(field.root(n), n)
    num = (pow(r, n, field.p) - 1) * field.inv(n) % field.p
    den = field.sub(np.full(n, r % field.p, np.uint64), points)
    inv = np.array([field.inv(int(d)) for d in den], np.uint64) if n <= 64 else _batch_inv(field, den)
    return field.mul(field.mul(points, inv), np.uint64(num))


def _batch_inv(field: Field, a: np.ndarray) -> np.ndarray:
    """Montgomery's batch inversion (one modular inverse for the whole vector)."""
    prefix = np.empty_like(a)
    acc = 1
    for i, v in enumerate(a.tolist()):
        prefix[i] = acc
        acc = acc * v % field.p
    inv = field.inv(acc)
    out = np.empty_like(a)
    for i in range(a.size - 1, -1, -1):
        out[i] = inv * int(prefix[i]) % field.p
        inv = inv * int(a[i]) % field.p
    return out


def query(field: Field, x_share: np.ndarray, proof_share: np.ndarray, rho: np.ndarray, shape: Shape,
          points: list[int], *, leader: bool) -> np.ndarray:
    """One verifier's share of (W(r) for every wire, P(r)) at each of ``points``, then of the output."""
    c, n = shape.chunk, shape.domain
    n_seeds = POINTS * 2 * c
    seeds, coeffs = proof_share[:n_seeds].reshape(2 * c, POINTS), proof_share[n_seeds:]
    xs, rs = _grid(field, x_share, rho, shape)
    weights = [_lagrange(field, shape, r) for r in points]
    at = [field.dot(seeds, w[list(shape.seed_positions)][None, :], axis=-1) for w in weights]  # the seeds' terms
    for start in range(0, c, _WIRE_BATCH):
        cols = slice(start, min(c, start + _WIRE_BATCH))
        a, b = _wire_block(field, xs, rs, cols, leader=leader)
        for k, w in enumerate(weights):
            lam = w[1:shape.calls + 1][None, :]
            at[k][cols] = field.add(at[k][cols], field.dot(a, lam, axis=-1))
            at[k][c + cols.start:c + cols.stop] = field.add(at[k][c + cols.start:c + cols.stop],
                                                             field.dot(b, lam, axis=-1))
    out = []
    for k, r in enumerate(points):
        out.append(at[k])
        out.append(np.array([int(field.dot(coeffs, field.powers(r, coeffs.size)))], np.uint64))
    root = field.root(n)
    at_seeds = sum(int(field.dot(coeffs, field.powers(pow(root, q, field.p), coeffs.size)))
                   for q in shape.seed_positions)
    output = (n * (int(coeffs[0]) + int(coeffs[n])) - at_seeds) % field.p  # sum of P(w^k), k = 1..M
    out.append(np.array([output], np.uint64))
    return np.concatenate(out)


def decide(field: Field, verifier: np.ndarray, shape: Shape) -> bool:
    """Accept iff, at every point, sum_j W_a_j(r) W_b_j(r) = P(r), and the output is 0 (``verifier`` = the sum
    of both shares)."""
    c = shape.chunk
    per = 2 * c + 1
    for k in range(POINTS):
        block = verifier[k * per:(k + 1) * per]
        if int(field.dot(block[:c], block[c:2 * c])) != int(block[2 * c]):
            return False
    return int(verifier[-1]) == 0
