"""Backend "he": additively homomorphic summation with BFV (Brakerski 2012; Fan & Vercauteren 2012) in
TenSEAL (Benaissa et al. 2021, over Microsoft SEAL).

Parties: a *key holder* generates the BFV key pair and publishes a public context (no secret key); the
clients encrypt their vectors under it; the server adds ciphertexts and sends only the aggregate to the key
holder, who decrypts and returns the plaintext sum.  The server never holds the secret key; the key holder
never sees an individual ciphertext.  Trust model: the key holder must not collude with the server
(together they decrypt any single client's upload).  See docs/secagg.md.

Packing: with B = n * max_value + 1 (so a sum of n entries never reaches B) and plain modulus t, each of
the N batching slots carries P = max{p : B^p <= t} entries as the digits of slot = sum_j c_j B^j (Horner).
Adding n such slots adds digit-wise without carries and stays below B^P <= t, so the plaintext never wraps
and decoding the base-B digits is exact.  With t ~ 2^40 and n = 64, P = 6 entries ride in one slot.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from secprune.secagg.base import SecureSum
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.messages import (
    KEY_HOLDER,
    SERVER,
    MsgType,
    Reader,
    ReplayGuard,
    decode,
    encode,
    party_name,
)
from secprune.secagg.ring import pack, packed_size, ring_bits, unpack

__all__ = ["HEConfig", "KeyHolder", "HEClient", "HEServer", "HESum", "batching_prime", "slot_packing"]

_POLY_DEGREES = (4096, 8192, 16384, 32768)  # TenSEAL needs key switching: N >= 4096


def _ts():
    import tenseal

    return tenseal


def batching_prime(*, bits: int, poly_modulus_degree: int) -> int:
    """Largest prime t < 2^bits with t = 1 mod 2N, so BFV batching gives N slots (cf. SEAL's
    PlainModulus::Batching)."""
    from Crypto.Util.number import isPrime

    step = 2 * poly_modulus_degree
    t = ((1 << bits) - 1) // step * step + 1
    while t > step:
        if isPrime(t):
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


@dataclass(frozen=True)
class HEConfig:
    """Public parameters of one round."""

    round_id: int
    n_clients: int
    length: int
    max_value: int
    plain_modulus: int
    poly_modulus_degree: int

    @property
    def packing(self) -> tuple[int, int]:
        return slot_packing(n_clients=self.n_clients, max_value=self.max_value,
                            plain_modulus=self.plain_modulus)

    @property
    def n_ciphertexts(self) -> int:
        _, per_slot = self.packing
        slots = -(-self.length // per_slot)
        return -(-slots // self.poly_modulus_degree)


def _ciphertexts_payload(cfg: HEConfig, cts: Iterable[bytes]) -> bytes:
    base, per_slot = cfg.packing
    cts = list(cts)
    body = b"".join(len(c).to_bytes(4, "big") + c for c in cts)
    return (base.to_bytes(8, "big") + bytes([per_slot]) + cfg.length.to_bytes(8, "big")
            + len(cts).to_bytes(4, "big") + body)


def _read_ciphertexts(cfg: HEConfig, payload: bytes, who: str) -> list[bytes]:
    r = Reader(payload)
    base, per_slot, n = r.u64(), r.u8(), r.u64()
    if (base, per_slot) != cfg.packing or n != cfg.length:
        raise ProtocolError(f"{who}: packing (B={base}, P={per_slot}, n={n}) differs from the round's "
                            f"(B, P)={cfg.packing}, n={cfg.length}")
    count = r.u32()
    if count != cfg.n_ciphertexts:
        raise ProtocolError(f"{who}: expected {cfg.n_ciphertexts} ciphertexts, got {count}")
    out = [r.take(r.u32()) for _ in range(count)]
    r.done()
    return out


def _load(ctx, data: bytes, who: str):
    try:
        return _ts().bfv_vector_from(ctx, data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ProtocolError(f"{who}: not a valid BFV ciphertext ({exc})") from None


class KeyHolder:
    """Holds the BFV secret key; publishes the public context and decrypts only aggregates."""

    def __init__(self, *, poly_modulus_degree: int = 4096, plain_modulus_bits: int = 40) -> None:
        if poly_modulus_degree not in _POLY_DEGREES:
            raise ValueError(f"poly_modulus_degree: expected one of {_POLY_DEGREES}, "
                             f"got {poly_modulus_degree}")
        if not 17 <= plain_modulus_bits <= 60:
            raise ValueError(f"plain_modulus_bits: expected 17..60, got {plain_modulus_bits}")
        ts = _ts()
        self.plain_modulus = batching_prime(bits=plain_modulus_bits, poly_modulus_degree=poly_modulus_degree)
        self.poly_modulus_degree = poly_modulus_degree
        self._ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=poly_modulus_degree,
                               plain_modulus=self.plain_modulus)
        self._guard: ReplayGuard | None = None
        self._round: int | None = None

    def public_context(self, *, round_id: int = 0) -> bytes:
        """HE_CONTEXT message: the serialized context with the public key only."""
        data = self._ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                   save_relin_keys=False)
        return encode(MsgType.HE_CONTEXT, round_id=round_id, sender=KEY_HOLDER, receiver=SERVER, payload=data)

    def decrypt(self, cfg: HEConfig, message: bytes) -> bytes:
        """Decrypt the aggregate (HE_CIPHERTEXTS from the server) and return HE_RESULT with the b-bit sum."""
        header, payload = decode(message, expect=MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id,
                                 receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"aggregate: expected from the server, got {party_name(header.sender)}")
        if self._round != cfg.round_id:
            self._round, self._guard = cfg.round_id, ReplayGuard()
        self._guard.check(header)
        base, per_slot = cfg.packing
        t = self.plain_modulus
        parts = [np.mod(np.asarray(_load(self._ctx, c, "aggregate").decrypt(), dtype=np.int64), t)
                 for c in _read_ciphertexts(cfg, payload, "aggregate")]
        slots = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if slots.size and int(slots.max()) >= base**per_slot:  # a sum of valid uploads is < B^P <= t
            raise ProtocolError("aggregate: decrypted slot out of range (malformed upload or noise overflow)")
        total = decode_slots(slots, base=base, per_slot=per_slot, n=cfg.length)
        bits = ring_bits(n_clients=cfg.n_clients, max_value=cfg.max_value)
        self._guard.mark(header)
        return encode(MsgType.HE_RESULT, round_id=cfg.round_id, sender=KEY_HOLDER, receiver=SERVER,
                      payload=bytes([bits]) + cfg.length.to_bytes(8, "big")
                      + pack(total.astype(np.uint64), bits))


class HEClient:
    """A client: loads the public context from bytes, encrypts its packed vector."""

    def __init__(self, client_id: int, context_message: bytes) -> None:
        header, payload = decode(context_message, expect=MsgType.HE_CONTEXT, round_id=0, receiver=client_id)
        if header.sender != SERVER:
            raise ProtocolError(f"context: expected from the server, got {party_name(header.sender)}")
        self.id = client_id
        self._ctx = _ts().context_from(payload)
        if self._ctx.is_private():
            raise ProtocolError("context: a client must not receive the secret key")

    def encrypt(self, cfg: HEConfig, vector: np.ndarray) -> bytes:
        """HE_CIPHERTEXTS: the vector packed P entries per slot, N slots per ciphertext."""
        if vector.ndim != 1 or vector.size != cfg.length:
            raise ValueError(f"client {self.id}: expected a flat vector of {cfg.length} entries, "
                             f"got shape {vector.shape}")
        base, per_slot = cfg.packing
        slots = encode_slots(vector, base=base, per_slot=per_slot)
        ts, deg = _ts(), cfg.poly_modulus_degree
        cts = (ts.bfv_vector(self._ctx, slots[i:i + deg].tolist()).serialize()
               for i in range(0, slots.size, deg))
        return encode(MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id, sender=self.id, receiver=SERVER,
                      payload=_ciphertexts_payload(cfg, cts))


class HEServer:
    """Adds the clients' ciphertexts as they arrive; cannot decrypt (public context only)."""

    def __init__(self, cfg: HEConfig, public_context: bytes) -> None:
        self.cfg = cfg
        self._ctx = _ts().context_from(public_context)
        if self._ctx.is_private():
            raise ProtocolError("context: the server must not hold the secret key")
        self._acc: list | None = None
        self._guard = ReplayGuard()
        self.uploaded: list[int] = []

    def receive(self, message: bytes) -> None:
        header, payload = decode(message, expect=MsgType.HE_CIPHERTEXTS, round_id=self.cfg.round_id,
                                 receiver=SERVER)
        if header.sender >= self.cfg.n_clients:
            raise ProtocolError(f"ciphertexts: unknown client id {header.sender}")
        self._guard.check(header)
        who = f"ciphertexts from client {header.sender}"
        cts = [_load(self._ctx, c, who) for c in _read_ciphertexts(self.cfg, payload, who)]
        if self._acc is None:
            self._acc = cts
        else:
            for acc, ct in zip(self._acc, cts, strict=True):
                acc += ct
        self._guard.mark(header)
        self.uploaded.append(header.sender)

    def aggregate(self) -> bytes:
        """HE_CIPHERTEXTS to the key holder: the encrypted sum."""
        if not self.uploaded:
            raise SecAggAbortError("he: no client uploaded ciphertexts this round; nothing to aggregate")
        return encode(MsgType.HE_CIPHERTEXTS, round_id=self.cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                      payload=_ciphertexts_payload(self.cfg, (c.serialize() for c in self._acc)))

    def result(self, message: bytes) -> np.ndarray:
        header, payload = decode(message, expect=MsgType.HE_RESULT, round_id=self.cfg.round_id,
                                 receiver=SERVER)
        if header.sender != KEY_HOLDER:
            raise ProtocolError(f"result: expected from the key holder, got {party_name(header.sender)}")
        self._guard.check(header)
        r = Reader(payload)
        bits, n = r.u8(), r.u64()
        if n != self.cfg.length:
            raise ProtocolError(f"result: expected {self.cfg.length} entries, got {n}")
        out = unpack(r.take(packed_size(n, bits)), bits, n).astype(np.int64)
        r.done()
        self._guard.mark(header)
        return out


class HESum(SecureSum):
    """Simulated BFV summation among clients, a server and a separate key holder, all messages as bytes.

    Options: ``poly_modulus_degree`` N (default 4096), ``plain_modulus_bits`` (default 40: P entries per slot
    as in :func:`slot_packing`; up to 60, lower keeps more noise margin), ``dropouts`` (``{"upload": ids}``:
    those clients send nothing; the result is the survivors' sum, ``last_survivors``).  The key holder's
    public context goes to the server and every client once, in the first round.
    """

    name = "he"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0, poly_modulus_degree: int = 4096,
                 plain_modulus_bits: int = 40, dropouts: Mapping[str, Iterable[int]] | None = None) -> None:
        super().__init__(n_clients=n_clients, max_value=max_value)
        if not isinstance(max_value, (int, np.integer)) or max_value < 1:
            raise ValueError(f"max_value: expected an int >= 1, got {max_value!r}")
        self.key_holder = KeyHolder(poly_modulus_degree=poly_modulus_degree,
                                    plain_modulus_bits=plain_modulus_bits)
        self.base, self.per_slot = slot_packing(n_clients=n_clients, max_value=int(max_value),
                                                plain_modulus=self.key_holder.plain_modulus)
        unknown = set(dropouts or {}) - {"upload"}
        if unknown:
            raise ValueError(f"dropouts: the he backend supports only the 'upload' stage, "
                             f"got {sorted(unknown)}")
        self.dropped = {int(i) for i in (dropouts or {}).get("upload", ())}
        if any(not 0 <= i < n_clients for i in self.dropped):
            raise ValueError(f"dropouts: client ids must lie in 0..{n_clients - 1}")
        self.seed = seed
        self._session = os.urandom(8)
        self._counter = 0
        self._clients: dict[int, HEClient] | None = None
        self._server_ctx: bytes | None = None
        self.last_survivors: list[int] = []

    def _send(self, sender: int, receiver: int, message: bytes) -> bytes:
        self.log.add(sender=party_name(sender), receiver=party_name(receiver), nbytes=len(message))
        return message

    def _setup(self) -> None:
        msg = self._send(KEY_HOLDER, SERVER, self.key_holder.public_context())
        _, payload = decode(msg, expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
        self._server_ctx = payload
        self._clients = {}
        for i in range(self.n_clients):
            fwd = self._send(SERVER, i, encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=i,
                                               payload=payload))
            self._clients[i] = HEClient(i, fwd)

    def _sum(self, key: str, vectors: list[np.ndarray]) -> np.ndarray:
        if self._clients is None:
            self._setup()
        self._counter += 1
        digest = hashlib.sha256(self._session + self._counter.to_bytes(8, "big") + key.encode()).digest()
        cfg = HEConfig(round_id=int.from_bytes(digest[:8], "big"), n_clients=self.n_clients,
                       length=vectors[0].size, max_value=int(self.max_value),
                       plain_modulus=self.key_holder.plain_modulus,
                       poly_modulus_degree=self.key_holder.poly_modulus_degree)
        server = HEServer(cfg, self._server_ctx)
        for i in range(self.n_clients):
            if i not in self.dropped:
                server.receive(self._send(i, SERVER, self._clients[i].encrypt(cfg, vectors[i])))
        agg = self._send(SERVER, KEY_HOLDER, server.aggregate())
        result = server.result(self._send(KEY_HOLDER, SERVER, self.key_holder.decrypt(cfg, agg)))
        self.last_survivors = sorted(server.uploaded)
        return result
