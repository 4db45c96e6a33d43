"""Backend "he": additively homomorphic summation with BFV (Brakerski 2012; Fan & Vercauteren 2012) in
TenSEAL (Benaissa et al. 2021, over Microsoft SEAL), hardened against an active server.

Parties, each a state machine over ``bytes``:

* the **key holder** generates the BFV keys and publishes the public context, signed with its long-term key
  (clients refuse a context the server made up);
* a **client** checks its vector (shape, entries in [0, max_value]), packs it (:mod:`he_packing`), adds a
  mask m_i uniform on Z_t that only it and the server can derive, encrypts, and signs the upload;
* the **server** checks each upload's signature and every ciphertext (parses, slot count) before accepting it
  (atomic: a bad upload changes nothing and names its sender), and forwards the accepted uploads unchanged;
* the key holder checks the signatures again and adds the uploads itself; it decrypts only when the server
  asks for exactly the set it added and that set has at least t distinct signed uploads of this round (its
  own t, not the server's), so forwarding one client's ciphertext as "the aggregate" decrypts nothing;
* the server removes sum_i m_i and refuses a sum outside [0, |S| * max_value] (digits of a slot >= B, or an
  entry above the number of summed clients).

The key holder sees masked uploads only; the server sees ciphertexts only.  Together they learn every input
(the trust split is the same as before).  See docs/secagg.md.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secprune.secagg.base import SecureSum, check_vector
from secprune.secagg.crypto import public_bytes
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.he_packing import batching_prime, decode_slots, encode_slots, slot_packing, uniform_mod
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.ledger import Ledger, content_digest
from secprune.secagg.messages import KEY_HOLDER, SERVER, MsgType, Reader, decode, encode, party_name
from secprune.secagg.params import Threat, he_threshold
from secprune.secagg.params import threat as _make_threat
from secprune.secagg.prg import MaskPRG, derive_key
from secprune.secagg.ring import pack, packed_size, unpack
from secprune.secagg.session import check_name

__all__ = ["HEConfig", "KeyHolder", "HEClient", "HEServer", "HESum", "batching_prime", "slot_packing",
           "encode_slots", "decode_slots"]

_POLY_DEGREES = (4096, 8192, 16384, 32768)  # TenSEAL needs key switching: N >= 4096
_LABEL = b"secprune/secagg/he/"


def _ts():
    import tenseal

    return tenseal


@dataclass(frozen=True)
class HEConfig:
    """Public parameters of one round (one matrix)."""

    round_id: int
    n_clients: int
    length: int
    max_value: int
    plain_modulus: int
    poly_modulus_degree: int
    server_key: bytes = bytes(32)  # the server's X25519 key: clients derive their masks from it

    @property
    def packing(self) -> tuple[int, int]:
        return slot_packing(n_clients=self.n_clients, max_value=self.max_value,
                            plain_modulus=self.plain_modulus)

    @property
    def slots(self) -> int:
        return -(-self.length // self.packing[1])

    @property
    def n_ciphertexts(self) -> int:
        return -(-self.slots // self.poly_modulus_degree)

    def slot_counts(self) -> list[int]:
        """Slots in each ciphertext: N, ..., N, rest."""
        deg = self.poly_modulus_degree
        return [min(deg, self.slots - i) for i in range(0, self.slots, deg)]

    @property
    def rid(self) -> bytes:
        return self.round_id.to_bytes(8, "big")

    def encode(self) -> dict:
        """Plain values, to carry the round's public parameters in a message."""
        return {"round_id": self.round_id, "n_clients": self.n_clients, "length": self.length,
                "max_value": self.max_value, "plain_modulus": self.plain_modulus,
                "poly_modulus_degree": self.poly_modulus_degree, "server_key": self.server_key}

    @classmethod
    def decode(cls, values: dict) -> HEConfig:
        return cls(**{k: values[k] for k in ("round_id", "n_clients", "length", "max_value", "plain_modulus",
                                              "poly_modulus_degree", "server_key")})


def _mask_key(shared: bytes, cfg: HEConfig, client: int) -> bytes:
    return derive_key(shared, info=_LABEL + b"mask" + cfg.rid + struct.pack(">I", client))


def _decode(who: str, message, **kw):
    """:func:`decode` whose refusals name the party that refuses and what it refused."""
    try:
        return decode(message, **kw)
    except ProtocolError as exc:
        raise ProtocolError(f"{who}: {kw['expect'].name} refused: {exc}") from None


def _upload_message(signed: bytes) -> bytes:
    return _LABEL + b"upload" + hashlib.sha256(signed).digest()


def _context_message(data: bytes) -> bytes:
    return _LABEL + b"context" + hashlib.sha256(data).digest()


def _parse_upload(cfg: HEConfig, message: bytes, ctx, directory: KeyDirectory, who: str) -> tuple[int, bytes, list]:
    """(sender, c_pk, loaded ciphertexts) of a signed HE_CIPHERTEXTS message, all checked; else ProtocolError."""
    header, payload = _decode(who, message, expect=MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id, receiver=SERVER)
    u = header.sender
    if u >= cfg.n_clients:
        raise ProtocolError(f"{who}: ciphertexts from unknown {party_name(u)}")
    if len(payload) < 64 or not directory.verify(u, _upload_message(message[:-64]), payload[-64:]):
        raise ProtocolError(f"{who}: ciphertexts claiming to be from client {u} are not signed by its pinned key "
                            f"(relabelled, tampered or forged); rejected")
    r = Reader(payload[:-64])
    c_pk, base, per_slot, n = r.take(32), r.u64(), r.u8(), r.u64()
    if (base, per_slot) != cfg.packing or n != cfg.length:
        raise ProtocolError(f"{who}: client {u}'s packing (B={base}, P={per_slot}, n={n}) differs from the "
                            f"round's (B, P)={cfg.packing}, n={cfg.length}; rejected")
    count = r.u32()
    if count != cfg.n_ciphertexts:
        raise ProtocolError(f"{who}: client {u} sent {count} ciphertexts, expected {cfg.n_ciphertexts}; rejected")
    cts = []
    for i, slots in enumerate(cfg.slot_counts()):
        data = r.take(r.u32())
        try:
            ct = _ts().bfv_vector_from(ctx, data)
            size = ct.size()
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ProtocolError(f"{who}: ciphertext {i} from client {u} is not a valid BFV ciphertext ({exc}); "
                                f"upload rejected") from None
        if size != slots:
            raise ProtocolError(f"{who}: ciphertext {i} from client {u} has {size} slots, expected {slots}; "
                                f"upload rejected")
        cts.append(ct)
    r.done()
    return u, c_pk, cts


class KeyHolder:
    """Holds the BFV secret key; publishes the signed public context and decrypts only verified sums."""

    def __init__(self, *, identity: IdentityKey, directory: KeyDirectory, threshold: int | None = None,
                 threat: Threat | None = None, poly_modulus_degree: int = 4096, plain_modulus_bits: int = 40) -> None:
        if poly_modulus_degree not in _POLY_DEGREES:
            raise ValueError(f"poly_modulus_degree: expected one of {_POLY_DEGREES}, "
                             f"got {poly_modulus_degree}")
        if not 17 <= plain_modulus_bits <= 60:
            raise ValueError(f"plain_modulus_bits: expected 17..60, got {plain_modulus_bits}")
        if directory.keys.get(KEY_HOLDER) != identity.public:
            raise ValueError("key holder: its identity key is not the one pinned in the directory")
        self.threat = threat or _default_threat(directory.n_clients)
        self.threshold = he_threshold(n_clients=directory.n_clients, threat=self.threat, threshold=threshold,
                                      flag_prefix="")
        ts = _ts()
        self.plain_modulus = batching_prime(bits=plain_modulus_bits, poly_modulus_degree=poly_modulus_degree)
        self.poly_modulus_degree = poly_modulus_degree
        self._ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=poly_modulus_degree,
                               plain_modulus=self.plain_modulus)
        self._identity, self.directory = identity, directory
        self._round: int | None = None
        self._sum: list | None = None
        self._added: list[int] = []
        self._done: set[int] = set()  # rounds already decrypted

    def export_state(self) -> dict:
        """The secret context and the rounds already decrypted (secret: keep it private)."""
        return {"context": self._ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                               save_relin_keys=False),
                "threshold": self.threshold, "threat": self.threat.as_dict(), "plain_modulus": self.plain_modulus,
                "poly_modulus_degree": self.poly_modulus_degree, "done": sorted(self._done)}

    @classmethod
    def import_state(cls, state: dict, *, identity: IdentityKey, directory: KeyDirectory) -> KeyHolder:
        holder = cls.__new__(cls)
        if directory.keys.get(KEY_HOLDER) != identity.public:
            raise ValueError("key holder: its identity key is not the one pinned in the directory")
        holder._ctx = _ts().context_from(state["context"])
        holder.threshold, holder.plain_modulus = int(state["threshold"]), int(state["plain_modulus"])
        t = state["threat"]
        holder.threat = Threat(n_clients=t["clients"], colluders=t["colluders"], dropouts=t["dropouts"],
                               min_contributors=t["min_contributors"], sigma=t["sigma"], eta=t["eta"],
                               redraws=t["redraws"])
        holder.poly_modulus_degree = int(state["poly_modulus_degree"])
        holder._identity, holder.directory = identity, directory
        holder._round, holder._sum, holder._added = None, None, []
        holder._done = {int(r) for r in state["done"]}
        return holder

    def public_context(self) -> bytes:
        """HE_CONTEXT: the serialized context with the public key only, signed by the key holder."""
        data = self._ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                   save_relin_keys=False)
        return encode(MsgType.HE_CONTEXT, round_id=0, sender=KEY_HOLDER, receiver=SERVER,
                      payload=data + self._identity.sign(_context_message(data)))

    def _check_cfg(self, cfg: HEConfig) -> None:
        if (cfg.n_clients, cfg.plain_modulus, cfg.poly_modulus_degree) != (
                self.directory.n_clients, self.plain_modulus, self.poly_modulus_degree):
            raise ProtocolError("key holder: the round's parameters do not match the key directory and context")
        if cfg.round_id in self._done:
            raise ProtocolError(f"key holder: round {cfg.round_id:#018x} was already decrypted (replay)")
        if self._round != cfg.round_id:
            self._round, self._sum, self._added = cfg.round_id, None, []

    def receive_upload(self, cfg: HEConfig, message: bytes) -> None:
        """HE_FORWARD: one client's signed upload; checked, then added (atomically) to this round's sum."""
        self._check_cfg(cfg)
        header, inner = _decode("key holder", message, expect=MsgType.HE_FORWARD, round_id=cfg.round_id,
                                receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"key holder: HE_FORWARD from {party_name(header.sender)}, not the server")
        u, _, cts = _parse_upload(cfg, inner, self._ctx, self.directory, "key holder")
        if u in self._added:
            raise ProtocolError(f"key holder: client {u}'s upload forwarded twice (replay); rejected")
        new = cts if self._sum is None else [a + c for a, c in zip(self._sum, cts, strict=True)]
        self._sum = new
        self._added.append(u)

    def decrypt(self, cfg: HEConfig, message: bytes) -> bytes:
        """HE_DECRYPT (the senders the server forwarded) -> HE_RESULT, if at least t distinct signed uploads."""
        self._check_cfg(cfg)
        header, payload = _decode("key holder", message, expect=MsgType.HE_DECRYPT, round_id=cfg.round_id,
                                  receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"key holder: HE_DECRYPT from {party_name(header.sender)}, not the server")
        r = Reader(payload)
        listed = [r.u32() for _ in range(min(r.u32(), cfg.n_clients + 1))]
        r.done()
        if sorted(listed) != sorted(self._added):
            raise ProtocolError(f"key holder: asked to decrypt the sum of clients {sorted(listed)}, but it added "
                                f"the signed uploads of {sorted(self._added)}; refused")
        if len(self._added) < self.threshold:
            raise SecAggAbortError(f"key holder: only {len(self._added)} signed uploads in this round, fewer "
                                   f"than t={self.threshold}; refused to decrypt")
        t = self.plain_modulus
        parts = [np.mod(np.asarray(c.decrypt(), dtype=np.int64), t) for c in self._sum]
        slots = np.concatenate(parts).astype(np.uint64) if parts else np.zeros(0, np.uint64)
        self._done.add(cfg.round_id)
        self._round, self._sum, self._added = None, None, []
        bits = t.bit_length()
        return encode(MsgType.HE_RESULT, round_id=cfg.round_id, sender=KEY_HOLDER, receiver=SERVER,
                      payload=bytes([bits]) + slots.size.to_bytes(8, "big") + pack(slots, bits))


def _verified_context(message: bytes, directory: KeyDirectory, receiver: int, who: str):
    header, payload = _decode(who, message, expect=MsgType.HE_CONTEXT, round_id=0, receiver=receiver)
    if len(payload) < 64 or not directory.verify(KEY_HOLDER, _context_message(payload[:-64]), payload[-64:]):
        raise ProtocolError(f"{who}: the HE context is not signed by the pinned key holder (substituted); refused")
    ctx = _ts().context_from(payload[:-64])
    if ctx.is_private():
        raise ProtocolError(f"{who}: the HE context carries a secret key; refused")
    return ctx


class HEClient:
    """A client: verifies the key holder's context, range-checks, masks, encrypts and signs its vector.

    ``ledger`` is its record of released inputs (default: a fresh in-memory one): a vector is encrypted for one
    round at most, whatever round id, name or run the server asks it under (:mod:`secprune.secagg.ledger`).
    """

    def __init__(self, client_id: int, context_message: bytes, *, identity: IdentityKey,
                 directory: KeyDirectory, ledger: Ledger | None = None) -> None:
        if directory.keys.get(client_id) != identity.public:
            raise ValueError(f"client {client_id}: the identity key is not the one pinned in the directory")
        self.id = client_id
        self._ctx = _verified_context(context_message, directory, client_id, f"client {client_id}")
        self._identity = identity
        self._prg = MaskPRG()
        self.ledger = ledger if ledger is not None else Ledger()

    def encrypt(self, cfg: HEConfig, vector: np.ndarray, *, name: str = "vector") -> bytes:
        """HE_CIPHERTEXTS: c_pk | B | P | n | count | ciphertexts of (packed slots + mask) | signature.

        The vector is range-checked and recorded as spent in the ledger before anything is encrypted."""
        name = check_name(name, who=f"client {self.id}: matrix name")
        vector = check_vector(vector, length=cfg.length, max_value=cfg.max_value, who=f"client {self.id}: {name}")
        self.ledger.spend([(name, content_digest(vector))], who=f"client {self.id}")
        base, per_slot = cfg.packing
        t = cfg.plain_modulus
        c_sk = X25519PrivateKey.generate()
        shared = c_sk.exchange(X25519PublicKey.from_public_bytes(cfg.server_key))
        mask = uniform_mod(_mask_key(shared, cfg, self.id), count=cfg.slots, modulus=t, prg=self._prg)
        slots = (encode_slots(vector, base=base, per_slot=per_slot).astype(np.uint64) + mask) % np.uint64(t)
        ts, deg = _ts(), cfg.poly_modulus_degree
        cts = [ts.bfv_vector(self._ctx, slots[i:i + deg].astype(np.int64).tolist()).serialize()
               for i in range(0, slots.size, deg)]
        payload = (public_bytes(c_sk) + base.to_bytes(8, "big") + bytes([per_slot]) + cfg.length.to_bytes(8, "big")
                   + len(cts).to_bytes(4, "big") + b"".join(len(c).to_bytes(4, "big") + c for c in cts))
        message = encode(MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id, sender=self.id, receiver=SERVER,
                         payload=payload)
        return message + self._identity.sign(_upload_message(message))


class HEServer:
    """Checks and forwards signed uploads, asks for the verified sum, removes the masks, checks the range."""

    def __init__(self, cfg: HEConfig, context_message: bytes, *, directory: KeyDirectory,
                 server_key: X25519PrivateKey, min_contributors: int = 3) -> None:
        if public_bytes(server_key) != cfg.server_key:
            raise ValueError("server: cfg.server_key must be the public key of server_key")
        self.cfg = cfg
        self.min_contributors = min_contributors
        self._ctx = _verified_context(context_message, directory, SERVER, "server")
        self.directory = directory
        self._sk = server_key
        self._c_pks: dict[int, bytes] = {}
        self.uploaded: list[int] = []
        self._stage = "upload"

    def receive(self, message: bytes) -> bytes:
        """Check one client's signed upload (all or nothing); returns the HE_FORWARD for the key holder."""
        if self._stage != "upload":
            raise ProtocolError(f"server (he, {self._stage}): ciphertexts arrived after the upload closed; rejected")
        u, c_pk, _ = _parse_upload(self.cfg, message, self._ctx, self.directory, "server (he, upload)")
        if u in self._c_pks:
            raise ProtocolError(f"server (he, upload): replayed ciphertexts from client {u}; rejected")
        self._c_pks[u] = c_pk
        self.uploaded.append(u)
        return encode(MsgType.HE_FORWARD, round_id=self.cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                      payload=message)

    def withdraw(self, client: int) -> None:
        """Leave out an accepted upload before the decryption request (its sender was dropped elsewhere)."""
        if self._stage != "upload":
            raise ProtocolError(f"server (he, {self._stage}): an upload withdrawn after the upload closed")
        if client in self._c_pks:
            del self._c_pks[client]
            self.uploaded.remove(client)

    def decrypt_request(self) -> bytes:
        """HE_DECRYPT: the senders whose uploads were forwarded."""
        if self._stage != "upload":
            raise ProtocolError(f"server (he, {self._stage}): decryption requested twice")
        if not self.uploaded:
            raise SecAggAbortError("he: no client uploaded ciphertexts this round; nothing to aggregate")
        self._stage = "result"
        ids = sorted(self.uploaded)
        return encode(MsgType.HE_DECRYPT, round_id=self.cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                      payload=len(ids).to_bytes(4, "big") + b"".join(u.to_bytes(4, "big") for u in ids))

    def result(self, message: bytes) -> np.ndarray:
        """HE_RESULT -> the int64 sum over the uploaders, after removing their masks and checking the range."""
        if self._stage != "result":
            raise ProtocolError(f"server (he, {self._stage}): HE_RESULT out of stage")
        cfg = self.cfg
        header, payload = _decode("server (he, result)", message, expect=MsgType.HE_RESULT, round_id=cfg.round_id,
                                  receiver=SERVER)
        if header.sender != KEY_HOLDER:
            raise ProtocolError(f"server (he, result): expected from the key holder, got {party_name(header.sender)}")
        r = Reader(payload)
        bits, count = r.u8(), r.u64()
        if count != cfg.slots or bits != cfg.plain_modulus.bit_length():
            raise ProtocolError(f"server (he, result): {count} slots of {bits} bits, expected {cfg.slots}")
        slots = unpack(r.take(packed_size(count, bits)), bits, count).astype(np.uint64)
        r.done()
        t = np.uint64(cfg.plain_modulus)
        for u in sorted(self.uploaded):
            shared = self._sk.exchange(X25519PublicKey.from_public_bytes(self._c_pks[u]))
            mask = uniform_mod(_mask_key(shared, cfg, u), count=cfg.slots, modulus=cfg.plain_modulus)
            slots = (slots + (t - mask)) % t
        base, per_slot = cfg.packing
        if len(self.uploaded) < self.min_contributors:
            raise SecAggAbortError(f"server (he, result): {len(self.uploaded)} contributors, fewer than the "
                                   f"{self.min_contributors} every released sum needs; result refused")
        top = len(self.uploaded) * cfg.max_value
        total = decode_slots(slots.astype(np.int64), base=base, per_slot=per_slot, n=cfg.length) \
            if (slots < np.uint64(base**per_slot)).all() else None
        if total is None or (total.size and int(total.max()) > top):
            raise ProtocolError(f"server (he, result): the decrypted sum lies outside [0, {top}] "
                                f"(= |S| x max_value): a malformed upload or noise overflow; result refused")
        self._stage = "done"
        return total


class HESum(SecureSum):
    """Simulated BFV summation among clients, a server and a separate key holder, all messages as bytes.

    Options: ``poly_modulus_degree`` N (default 4096), ``plain_modulus_bits`` (default 40: P entries per slot
    as in :func:`slot_packing`; up to 60), the threat (``colluders``, ``dropout_budget``, ``min_contributors``,
    as for :class:`~secprune.secagg.pairwise.PairwiseSum`), ``threshold`` (signed uploads the key holder needs
    before it decrypts; default and floor: the most of the minimum contributors and floor(n/2) + 1) and
    ``dropouts`` (``{"upload": ids}``: those clients send nothing; the result is the survivors' sum,
    ``last_survivors``).  The key holder's signed public context goes to the server and every client once,
    in the first round; every client keeps one ledger across the summer's rounds.
    """

    name = "he"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0, poly_modulus_degree: int = 4096,
                 plain_modulus_bits: int = 40, threshold: int | None = None,
                 colluders: int | float | str | None = None, dropout_budget: int | float | str | None = None,
                 min_contributors: int | None = None, dropouts: Mapping[str, Iterable[int]] | None = None,
                 threat: Threat | None = None) -> None:
        super().__init__(n_clients=n_clients, max_value=max_value)
        if not isinstance(max_value, (int, np.integer)) or max_value < 1:
            raise ValueError(f"max_value: expected an int >= 1, got {max_value!r}")
        self.threat = threat or _make_threat(n_clients, colluders=colluders, dropouts=dropout_budget,
                                             min_contributors=min_contributors, flag_prefix="")
        self.threshold = he_threshold(n_clients=n_clients, threat=self.threat, threshold=threshold, flag_prefix="")
        unknown = set(dropouts or {}) - {"upload"}
        if unknown:
            raise ValueError(f"dropouts: the he backend supports only the 'upload' stage, "
                             f"got {sorted(unknown)}")
        self.dropped = {int(i) for i in (dropouts or {}).get("upload", ())}
        if any(not 0 <= i < n_clients for i in self.dropped):
            raise ValueError(f"dropouts: client ids must lie in 0..{n_clients - 1}")
        self._identities = {i: IdentityKey.generate() for i in (*range(n_clients), KEY_HOLDER)}
        self.directory = KeyDirectory({i: k.public for i, k in self._identities.items()})
        self.key_holder = KeyHolder(identity=self._identities[KEY_HOLDER], directory=self.directory,
                                    threshold=self.threshold, threat=self.threat,
                                    poly_modulus_degree=poly_modulus_degree,
                                    plain_modulus_bits=plain_modulus_bits)
        self.base, self.per_slot = slot_packing(n_clients=n_clients, max_value=int(max_value),
                                                plain_modulus=self.key_holder.plain_modulus)
        self.seed = seed
        self._server_sk = X25519PrivateKey.generate()
        self._nonce = os.urandom(8)
        self._counter = 0
        self._clients: dict[int, HEClient] | None = None
        self.ledgers = {i: Ledger() for i in range(n_clients)}
        self._context: bytes | None = None
        self.last_survivors: list[int] = []

    def _send(self, sender: int, receiver: int, message: bytes) -> bytes:
        self.log.add(sender=party_name(sender), receiver=party_name(receiver), nbytes=len(message))
        return message

    def _setup(self) -> None:
        msg = self._send(KEY_HOLDER, SERVER, self.key_holder.public_context())
        self._context = msg
        _, payload = decode(msg, expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
        self._clients = {}
        for i in range(self.n_clients):
            fwd = self._send(SERVER, i, encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=i,
                                               payload=payload))
            self._clients[i] = HEClient(i, fwd, identity=self._identities[i], directory=self.directory,
                                        ledger=self.ledgers[i])

    def _sum_matrix(self, key: str, vectors: list[np.ndarray]) -> np.ndarray:
        if self._clients is None:
            self._setup()
        self._counter += 1
        digest = hashlib.sha256(self._nonce + self._counter.to_bytes(8, "big") + key.encode()).digest()
        cfg = HEConfig(round_id=int.from_bytes(digest[:8], "big"), n_clients=self.n_clients,
                       length=vectors[0].size, max_value=int(self.max_value),
                       plain_modulus=self.key_holder.plain_modulus,
                       poly_modulus_degree=self.key_holder.poly_modulus_degree,
                       server_key=public_bytes(self._server_sk))
        server = HEServer(cfg, self._context, directory=self.directory, server_key=self._server_sk,
                          min_contributors=self.threat.min_contributors)
        for i in range(self.n_clients):
            if i not in self.dropped:
                fwd = server.receive(self._send(i, SERVER, self._clients[i].encrypt(cfg, vectors[i], name=key)))
                self.key_holder.receive_upload(cfg, self._send(SERVER, KEY_HOLDER, fwd))
        request = self._send(SERVER, KEY_HOLDER, server.decrypt_request())
        result = server.result(self._send(KEY_HOLDER, SERVER, self.key_holder.decrypt(cfg, request)))
        self.last_survivors = sorted(server.uploaded)
        return result


def _default_threat(n_clients: int) -> Threat:
    return _make_threat(n_clients)
