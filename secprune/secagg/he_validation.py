"""Checked inputs for the he backend: each client proves to the server and the key holder together that what it
encrypted is a 0/1 vector (and, for pruning masks, one with exactly the right number of ones per comparison
group), and neither party learns the vector.

The design is Prio's (Corrigan-Gibbs and Boneh, NSDI 2017; the IETF VDAF draft's Prio3) with the key holder as
the second aggregator, which the he backend already trusts not to collude with the server.  Beside its BFV
ciphertexts the client sends:

* the key holder, sealed to its X25519 key: a 32-byte seed from which the key holder expands its additive share
  a of the digits x and its share of the proof;
* the server: the other share c = x - a (mod t) and its share of the proof, in the clear (c is uniform: a is);
* both: the hashes of both input shares, from which both derive the proof's randomness rho (the client commits
  to x before it knows rho).

The proof is a fully linear proof (:mod:`secprune.secagg.flp`) of sum_i rho_i x_i (x_i - 1) = 0.  The key holder
draws the query points and two more random vectors, and both parties compute, on their shares only:

* the proof's query (each wire's value at the points, the gadget polynomial there, the circuit's output);
* **group totals**: sum_g rho_g (sum_{i in g} x_i - ones), zero when every group holds exactly ``ones`` ones;
* **binding** to the encryption: the key holder decrypts the client's masked upload (slots X + m, uniform to it
  since it does not know m) and the server knows m, so they hold additive shares of the packed slots X; the
  test sum_j rho_j (X_j - sum_d B^d x_{jP+d}) = 0 checks that the ciphertexts encrypt exactly the proven digits.

Each sends the other its share; the sums are zero (or, for the proof, consistent) for an honest client and
reveal nothing else: the proof's values are masked by its random wire seeds, the two zero tests are zero.  A
client whose check fails is rejected by both, named, and left out of the sum; the others' sum completes.
Soundness: an input outside {0, 1} passes with probability about 1/t, a wrong proof about (2M'/t)^2, a wrong
group total or encryption 1/t each (t ~ 2^40).  All arithmetic is mod t, the BFV plain modulus.

Costs (measured in docs/secagg.md): the client's upload grows by the 40-bit share c (5 bytes per entry) and a
proof of about 4 sqrt(L) residues; its CPU by the proof, O(L log L); each verifier's by O(L), the key holder's
by one decryption of each client's upload.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secprune.secagg import flp
from secprune.secagg.crypto import aead_decrypt, aead_encrypt, public_bytes
from secprune.secagg.errors import ProtocolError
from secprune.secagg.field import Field
from secprune.secagg.messages import Reader
from secprune.secagg.prg import MaskPRG, derive_key

__all__ = ["Rule", "field_for", "client_parts", "server_view", "key_holder_view", "draw_randomness",
           "verifier_share", "decide", "pack40", "unpack40", "KH_PART_SIZE", "Randomness"]

_LABEL = b"secprune/secagg/he-validation/"
KH_PART_SIZE = 32 + 12 + 32 + 16 + 32  # ephemeral key, nonce, sealed seed + tag, hash of the server's share


@dataclass(frozen=True)
class Rule:
    """What a valid input is besides 0/1 entries: exactly ``ones`` ones in every ``group`` ("row", "column" or
    "layer", over the last two dimensions of ``shape``); ``group`` "" for no group rule."""

    group: str = ""
    shape: tuple[int, ...] = ()
    ones: int = 0

    def encode(self) -> dict:
        return {"group": self.group, "shape": list(self.shape), "ones": self.ones}

    @classmethod
    def decode(cls, values: dict | None) -> Rule:
        if not values:
            return cls()
        return cls(group=str(values["group"]), shape=tuple(int(s) for s in values["shape"]), ones=int(values["ones"]))


@dataclass(frozen=True)
class Randomness:
    """The key holder's draw for one client's check: query points and the seeds of the two zero tests."""

    points: tuple[int, ...]
    group_seed: bytes
    bind_seed: bytes

    def encode(self) -> bytes:
        return b"".join(struct.pack(">Q", r) for r in self.points) + self.group_seed + self.bind_seed

    @classmethod
    def decode(cls, r: Reader) -> Randomness:
        return cls(points=tuple(r.u64() for _ in range(flp.POINTS)), group_seed=r.take(32), bind_seed=r.take(32))


@lru_cache(maxsize=8)
def field_for(plain_modulus: int) -> Field:
    return Field(plain_modulus)


def pack40(values: np.ndarray) -> bytes:
    """Residues below 2^40, 5 little-endian bytes each."""
    v = np.ascontiguousarray(values, dtype="<u8")
    return v.view(np.uint8).reshape(-1, 8)[:, :5].tobytes()


def unpack40(data: bytes, count: int) -> np.ndarray:
    if len(data) != 5 * count:
        raise ProtocolError(f"validation: expected {5 * count} bytes of residues, got {len(data)}")
    raw = np.zeros((count, 8), np.uint8)
    raw[:, :5] = np.frombuffer(data, np.uint8).reshape(count, 5)
    return raw.view("<u8").reshape(count).astype(np.uint64)


def _expand(field: Field, key: bytes, label: bytes, count: int) -> np.ndarray:
    """``count`` uniform residues from a key (AES-CTR words, rejection sampled)."""
    sub = derive_key(key, info=_LABEL + b"expand" + label)
    out, have, offset, prg = [], 0, 0, MaskPRG()
    while have < count:
        want = count - have + 64
        got = field.uniform(prg.expand(sub, want, np.uint64, offset=offset))[:count - have]
        offset += want
        out.append(got)
        have += got.size
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def _context(round_id: int, client: int, length: int, p: int) -> bytes:
    return struct.pack(">QIQQ", round_id, client, length, p)


def _part_kh(seed: bytes) -> bytes:
    return hashlib.sha256(_LABEL + b"part-kh" + seed).digest()


def _part_s(share: bytes) -> bytes:
    return hashlib.sha256(_LABEL + b"part-s" + share).digest()


def _seal_key(shared: bytes, context: bytes) -> bytes:
    return derive_key(shared, info=_LABEL + b"seal" + context)


def client_parts(*, plain_modulus: int, round_id: int, client: int, x: np.ndarray, kh_pk: bytes
                 ) -> tuple[bytes, bytes]:
    """(the key holder's part, the server's part) of a client's proof that ``x`` (0/1) is valid."""
    field = field_for(plain_modulus)
    x = field.asfield(np.asarray(x))
    length = x.size
    shape = flp.shape_for(length)
    ctx = _context(round_id, client, length, plain_modulus)
    seed = os.urandom(32)
    a = _expand(field, seed, b"input", length)
    c = field.sub(x, a)
    c_bytes = pack40(c)
    part_kh, part_s = _part_kh(seed), _part_s(c_bytes)
    rho = flp.joint_rho(field, context=ctx, parts=(part_s, part_kh), length=length)
    seeds = _expand(field, os.urandom(32), b"wire-seeds", 2 * shape.chunk * flp.POINTS)
    proof = flp.prove(field, x, rho, shape, seeds.reshape(2 * shape.chunk, flp.POINTS))
    proof_s = field.sub(proof, _expand(field, seed, b"proof", proof.size))
    esk = X25519PrivateKey.generate()
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    key = _seal_key(esk.exchange(X25519PublicKey.from_public_bytes(kh_pk)), ctx)
    nonce = os.urandom(12)
    sealed = aead_encrypt("aes-gcm", key, nonce, seed, ctx)
    return public_bytes(esk) + nonce + sealed + part_s, part_kh + c_bytes + pack40(proof_s)


@dataclass
class Share:
    """One verifier's view of one client's proof: its input share, its proof share, both parts."""

    x: np.ndarray
    proof: np.ndarray
    parts: tuple[bytes, bytes]  # (server's, key holder's)
    context: bytes


def server_view(*, plain_modulus: int, round_id: int, client: int, length: int, s_part: bytes) -> Share:
    shape = flp.shape_for(length)
    r = Reader(s_part)
    part_kh = r.take(32)
    c_bytes = r.take(5 * length)
    proof = unpack40(r.take(5 * shape.proof_length), shape.proof_length)
    r.done()
    c = unpack40(c_bytes, length)
    if (c >= plain_modulus).any() or (proof >= plain_modulus).any():
        raise ProtocolError(f"client {client}'s validation share holds values outside the field")
    return Share(c, proof, (_part_s(c_bytes), part_kh), _context(round_id, client, length, plain_modulus))


def key_holder_view(*, plain_modulus: int, round_id: int, client: int, length: int, kh_part: bytes,
                    kh_sk: X25519PrivateKey) -> Share:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    if len(kh_part) != KH_PART_SIZE:
        raise ProtocolError(f"client {client}'s sealed validation seed has {len(kh_part)} bytes, expected "
                            f"{KH_PART_SIZE}")
    field = field_for(plain_modulus)
    ctx = _context(round_id, client, length, plain_modulus)
    epk, nonce, sealed, part_s = kh_part[:32], kh_part[32:44], kh_part[44:92], kh_part[92:]
    try:
        key = _seal_key(kh_sk.exchange(X25519PublicKey.from_public_bytes(epk)), ctx)
    except ValueError:
        key = None
    seed = None if key is None else aead_decrypt("aes-gcm", key, nonce, sealed, ctx)
    if seed is None or len(seed) != 32:
        raise ProtocolError(f"client {client}'s sealed validation seed does not open")
    shape = flp.shape_for(length)
    return Share(_expand(field, seed, b"input", length), _expand(field, seed, b"proof", shape.proof_length),
                 (part_s, _part_kh(seed)), ctx)


def draw_randomness(*, plain_modulus: int, length: int) -> Randomness:
    """The key holder's fresh draw (query points outside the interpolation subgroup)."""
    field = field_for(plain_modulus)
    shape = flp.shape_for(length)
    points: list[int] = []
    while len(points) < flp.POINTS:
        r = int(field.uniform(np.frombuffer(os.urandom(64), np.uint64))[0])
        if flp.valid_point(field, shape, r):
            points.append(r)
    return Randomness(tuple(points), os.urandom(32), os.urandom(32))


def _group_weights(field: Field, rule: Rule, seed: bytes) -> tuple[np.ndarray, tuple[int, ...]]:
    rows, cols = rule.shape[-2:]
    lead = int(np.prod(rule.shape[:-2])) if len(rule.shape) > 2 else 1
    groups = {"row": (lead, rows), "column": (lead, cols), "layer": (lead,)}[rule.group]
    return _expand(field, seed, b"groups", int(np.prod(groups))).reshape(groups), groups


def _group_totals(field: Field, x: np.ndarray, rule: Rule) -> np.ndarray:
    rows, cols = rule.shape[-2:]
    m = x.reshape(-1, rows, cols)
    if rule.group == "row":
        return field.sum(m, axis=2)
    if rule.group == "column":
        return field.sum(m, axis=1)
    return field.sum(m.reshape(m.shape[0], -1), axis=1)


def verifier_share(*, plain_modulus: int, share: Share, rule: Rule, randomness: Randomness, leader: bool,
                   slots: np.ndarray, base: int, per_slot: int) -> np.ndarray:
    """This verifier's share of every check.  ``slots``: the key holder's decryption of the client's masked
    upload (X + m), or the server's -m; ``leader`` (the server) adds the public constants."""
    field = field_for(plain_modulus)
    length = share.x.size
    shape = flp.shape_for(length)
    rho = flp.joint_rho(field, context=share.context, parts=share.parts, length=length)
    out = [flp.query(field, share.x, share.proof, rho, shape, list(randomness.points), leader=leader)]
    if rule.group:
        weights, groups = _group_weights(field, rule, randomness.group_seed)
        totals = _group_totals(field, share.x, rule).reshape(groups)
        if leader:
            totals = field.sub(totals, np.uint64(rule.ones % plain_modulus))
        out.append(np.array([int(field.dot(totals.reshape(-1), weights.reshape(-1)))], np.uint64))
    else:
        out.append(np.zeros(1, np.uint64))
    bind = _expand(field, randomness.bind_seed, b"bind", slots.size)
    powers = field.asfield([pow(base, d, plain_modulus) for d in range(per_slot)])
    digits = np.zeros(slots.size * per_slot, np.uint64)
    digits[:length] = share.x
    packed = field.sum(field.mul(digits.reshape(slots.size, per_slot), powers[None, :]), axis=1)
    out.append(np.array([int(field.dot(bind, field.sub(field.asfield(slots), packed)))], np.uint64))
    return np.concatenate(out)


def decide(*, plain_modulus: int, length: int, total: np.ndarray) -> str | None:
    """None if the combined shares pass every check, else what failed."""
    field = field_for(plain_modulus)
    shape = flp.shape_for(length)
    if not flp.decide(field, total[:-2], shape):
        return "its input is not a 0/1 vector (the proof fails)"
    if int(total[-2]) != 0:
        return "its input does not hold the required number of ones in every group"
    if int(total[-1]) != 0:
        return "its ciphertexts do not encrypt the input it proved"
    return None
