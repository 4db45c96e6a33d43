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
from dataclasses import field as dc_field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secprune.secagg.base import SecureSum, check_vector
from secprune.secagg.crypto import public_bytes
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.he_packing import batching_prime, decode_slots, encode_slots, slot_packing, uniform_mod
from secprune.secagg.he_validation import KH_PART_SIZE, Randomness, Rule
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.ledger import Ledger, content_digest
from secprune.secagg.messages import HEADER, KEY_HOLDER, SERVER, Header, MsgType, Reader, decode, encode, party_name
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
    validate: bool = False  # each client proves its 0/1 input (and the rule) to the server and key holder
    rule: Rule = Rule()  # ones per comparison group, when validating pruning masks

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
                "poly_modulus_degree": self.poly_modulus_degree, "server_key": self.server_key,
                "validate": self.validate, "rule": self.rule.encode()}

    @classmethod
    def decode(cls, values: dict) -> HEConfig:
        cfg = cls(**{k: values[k] for k in ("round_id", "n_clients", "length", "max_value", "plain_modulus",
                                             "poly_modulus_degree", "server_key")},
                  validate=bool(values.get("validate", False)), rule=Rule.decode(values.get("rule")))
        if cfg.validate and cfg.max_value != 1:
            raise ProtocolError("he round: input validation covers 0/1 inputs only")
        return cfg


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


_STRIPPED = 0xFFFFFFFF  # in a forward to the key holder: the server's validation part replaced by its hash


def _signed_digest(header: bytes, parts: list[bytes]) -> bytes:
    """What a client signs: the header and the hash of each part (so the server's part can be withheld from the
    key holder, which still checks the signature with its hash)."""
    return _upload_message(header + b"".join(hashlib.sha256(p).digest() for p in parts))


def _upload_payload(parts: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _split_upload(payload: bytes, who: str, u: int) -> tuple[list[bytes], bytes | None]:
    """(parts: ciphertexts, key holder's, server's or b"" when stripped; hash of the stripped server part)."""
    r = Reader(payload)
    parts, stripped = [], None
    for i in range(3):
        size = r.u32()
        if i == 2 and size == _STRIPPED:
            stripped = r.take(32)
            parts.append(b"")
        else:
            parts.append(r.take(size))
    r.done()
    return parts, stripped


def strip_for_key_holder(message: bytes) -> bytes:
    """A client's HE_CIPHERTEXTS with the server's validation part replaced by its hash (the key holder must
    never see the server's share of the input)."""
    payload, signature = message[HEADER.size:-64], message[-64:]
    parts, _ = _split_upload(payload, "server", -1)
    return (message[:HEADER.size] + _upload_payload(parts[:2]) + _STRIPPED.to_bytes(4, "big")
            + hashlib.sha256(parts[2]).digest() + signature)


def _parse_upload(cfg: HEConfig, message: bytes, ctx, directory: KeyDirectory, who: str
                  ) -> tuple[int, bytes, list, bytes, bytes]:
    """(sender, c_pk, loaded ciphertexts, key holder's validation part, server's validation part or b"") of a
    signed HE_CIPHERTEXTS message, all checked; else ProtocolError."""
    header, payload = _decode(who, message, expect=MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id, receiver=SERVER)
    u = header.sender
    if u >= cfg.n_clients:
        raise ProtocolError(f"{who}: ciphertexts from unknown {party_name(u)}")
    if len(payload) < 64 + 12:
        raise ProtocolError(f"{who}: ciphertexts from client {u}: truncated")
    try:
        parts, stripped = _split_upload(payload[:-64], who, u)
    except ProtocolError:
        raise ProtocolError(f"{who}: ciphertexts from client {u}: malformed parts; rejected") from None
    hashes = [hashlib.sha256(p).digest() for p in parts[:2]] + [stripped or hashlib.sha256(parts[2]).digest()]
    signed = _upload_message(message[:HEADER.size] + b"".join(hashes))
    if not directory.verify(u, signed, payload[-64:]):
        raise ProtocolError(f"{who}: ciphertexts claiming to be from client {u} are not signed by its pinned key "
                            f"(relabelled, tampered or forged); rejected")
    if cfg.validate and (len(parts[1]) != KH_PART_SIZE or (stripped is None and not parts[2])):
        raise ProtocolError(f"{who}: client {u} sent no proof that its input is valid; rejected")
    r = Reader(parts[0])
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
    return u, c_pk, cts, parts[1], parts[2]


@dataclass
class _Pending:
    """An upload whose checks are undecided: as forwarded, its ciphertexts, the key holder's share and draw."""

    upload: bytes
    cts: list | None  # parsed lazily after a restore (the upload is kept as bytes)
    share: np.ndarray
    randomness: Randomness


@dataclass
class _Round:
    """The key holder's state of one open round."""

    cfg: dict
    added: dict[int, list] = dc_field(default_factory=dict)  # accepted uploads' ciphertexts (None: as bytes)
    pending: dict[int, _Pending] = dc_field(default_factory=dict)
    rejected: dict[int, str] = dc_field(default_factory=dict)

    def export(self) -> dict:
        return {"cfg": {**self.cfg, "server_key": self.cfg["server_key"].hex()},
                "added": {u: [c.serialize() for c in cts] for u, cts in self.added.items()},
                "pending": {u: (p.upload, p.share.astype("<u8").tobytes(), p.randomness.encode())
                            for u, p in self.pending.items()},
                "rejected": dict(self.rejected)}

    @classmethod
    def load(cls, state: dict, ctx) -> _Round:
        ts = _ts()
        cfg = {**state["cfg"], "server_key": bytes.fromhex(state["cfg"]["server_key"])}
        pending = {int(u): _Pending(up, None, np.frombuffer(share, "<u8").astype(np.uint64),
                                    Randomness.decode(Reader(rnd)))
                   for u, (up, share, rnd) in state["pending"].items()}
        added = {int(u): [ts.bfv_vector_from(ctx, c) for c in cts] for u, cts in state["added"].items()}
        return cls(cfg=cfg, added=added, pending=pending,
                   rejected={int(u): str(w) for u, w in state["rejected"].items()})


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
        self._seal_sk = X25519PrivateKey.generate()  # clients seal their validation seeds to it
        self._rounds: dict[int, _Round] = {}  # open rounds (a step's matrices are checked side by side)
        self._done: set[int] = set()  # rounds already decrypted

    @property
    def rejected(self) -> dict[int, str]:
        """Clients whose input failed validation in an open round, with why."""
        return {u: why for r in self._rounds.values() for u, why in r.rejected.items()}

    def export_state(self) -> dict:
        """The secret context, the sealing key, the rounds already decrypted and the open ones (the uploads
        awaiting their checks' decision, as received): secret, keep it private."""
        return {"context": self._ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                               save_relin_keys=False),
                "seal_sk": self._seal_sk.private_bytes_raw(),
                "threshold": self.threshold, "threat": self.threat.as_dict(), "plain_modulus": self.plain_modulus,
                "poly_modulus_degree": self.poly_modulus_degree, "done": sorted(self._done),
                "rounds": {rid: r.export() for rid, r in self._rounds.items()}}

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
        holder._seal_sk = X25519PrivateKey.from_private_bytes(state["seal_sk"])
        holder._done = {int(r) for r in state["done"]}
        holder._rounds = {int(rid): _Round.load(r, holder._ctx) for rid, r in state.get("rounds", {}).items()}
        return holder

    def public_context(self) -> bytes:
        """HE_CONTEXT: the serialized context with the public key only, then the key holder's X25519 sealing key,
        signed by the key holder."""
        data = self._ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                   save_relin_keys=False) + public_bytes(self._seal_sk)
        return encode(MsgType.HE_CONTEXT, round_id=0, sender=KEY_HOLDER, receiver=SERVER,
                      payload=data + self._identity.sign(_context_message(data)))

    def _check_cfg(self, cfg: HEConfig) -> _Round:
        """The state of ``cfg``'s round (opened on first use; one config per round id)."""
        if (cfg.n_clients, cfg.plain_modulus, cfg.poly_modulus_degree) != (
                self.directory.n_clients, self.plain_modulus, self.poly_modulus_degree):
            raise ProtocolError("key holder: the round's parameters do not match the key directory and context")
        if cfg.round_id in self._done:
            raise ProtocolError(f"key holder: round {cfg.round_id:#018x} was already decrypted (replay)")
        state = self._rounds.setdefault(cfg.round_id, _Round(cfg=cfg.encode()))
        if state.cfg != cfg.encode():
            raise ProtocolError(f"key holder: round {cfg.round_id:#018x} asked with two different configurations")
        return state

    def receive_upload(self, cfg: HEConfig, message: bytes) -> bytes | None:
        """HE_FORWARD: one client's signed upload, checked.  Without validation it is added (atomically) to this
        round's sum; with validation the key holder computes its share of the client's checks and returns
        HE_VERIFY (its draw and its share) for the server, and adds the upload at :meth:`receive_decision`."""
        state = self._check_cfg(cfg)
        header, inner = _decode("key holder", message, expect=MsgType.HE_FORWARD, round_id=cfg.round_id,
                                receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"key holder: HE_FORWARD from {party_name(header.sender)}, not the server")
        u, _, cts, kh_part, s_part = _parse_upload(cfg, inner, self._ctx, self.directory, "key holder")
        if s_part:
            raise ProtocolError(f"key holder: the server forwarded client {u}'s own validation share; refused")
        if u in state.added or u in state.pending or u in state.rejected:
            raise ProtocolError(f"key holder: client {u}'s upload forwarded twice (replay); rejected")
        if not cfg.validate:
            state.added[u] = cts
            return None
        from secprune.secagg import he_validation as hv

        share = hv.key_holder_view(plain_modulus=cfg.plain_modulus, round_id=cfg.round_id, client=u,
                                   length=cfg.length, kh_part=kh_part, kh_sk=self._seal_sk)
        masked = np.concatenate([np.mod(np.asarray(c.decrypt(), np.int64), cfg.plain_modulus) for c in cts]
                                + [np.zeros(0, np.int64)])
        randomness = hv.draw_randomness(plain_modulus=cfg.plain_modulus, length=cfg.length)
        mine = hv.verifier_share(plain_modulus=cfg.plain_modulus, share=share, rule=cfg.rule, randomness=randomness,
                                 leader=False, slots=masked.astype(np.uint64), base=cfg.packing[0],
                                 per_slot=cfg.packing[1])
        state.pending[u] = _Pending(inner, cts, mine, randomness)
        return encode(MsgType.HE_VERIFY, round_id=cfg.round_id, sender=KEY_HOLDER, receiver=SERVER,
                      payload=struct.pack(">I", u) + randomness.encode() + hv.pack40(mine))

    def receive_decision(self, cfg: HEConfig, message: bytes) -> str | None:
        """HE_DECIDE: the server's share of one client's checks; both shares decide (the same way at the
        server).  A valid upload is added to the sum; an invalid one is rejected, and why is returned."""
        from secprune.secagg import he_validation as hv

        state = self._check_cfg(cfg)
        header, payload = _decode("key holder", message, expect=MsgType.HE_DECIDE, round_id=cfg.round_id,
                                  receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"key holder: HE_DECIDE from {party_name(header.sender)}, not the server")
        u = int.from_bytes(payload[:4], "big")
        if u not in state.pending:
            raise ProtocolError(f"key holder: a decision on client {u}, whose check is not pending; refused")
        pending = state.pending.pop(u)
        theirs = hv.unpack40(payload[4:], pending.share.size)
        field = hv.field_for(cfg.plain_modulus)
        why = hv.decide(plain_modulus=cfg.plain_modulus, length=cfg.length, total=field.add(pending.share, theirs))
        if why is None:
            cts = pending.cts if pending.cts is not None else _parse_upload(cfg, pending.upload, self._ctx,
                                                                            self.directory, "key holder")[2]
            state.added[u] = cts
        else:
            state.rejected[u] = why
        return why

    def decrypt(self, cfg: HEConfig, message: bytes) -> bytes:
        """HE_DECRYPT (the senders the server forwarded) -> HE_RESULT, if at least t distinct signed uploads."""
        state = self._check_cfg(cfg)
        header, payload = _decode("key holder", message, expect=MsgType.HE_DECRYPT, round_id=cfg.round_id,
                                  receiver=KEY_HOLDER)
        if header.sender != SERVER:
            raise ProtocolError(f"key holder: HE_DECRYPT from {party_name(header.sender)}, not the server")
        r = Reader(payload)
        listed = [r.u32() for _ in range(min(r.u32(), cfg.n_clients + 1))]
        r.done()
        if state.pending:
            raise ProtocolError(f"key holder: decryption asked while the checks of clients {sorted(state.pending)} "
                                "are undecided; refused")
        if len(set(listed)) != len(listed) or not set(listed) <= set(state.added):
            raise ProtocolError(f"key holder: asked to decrypt the sum of clients {listed}, but it accepted the "
                                f"signed uploads of {sorted(state.added)}; refused")
        if len(listed) < self.threshold:
            raise SecAggAbortError(f"key holder: only {len(listed)} signed uploads in this round, fewer "
                                   f"than t={self.threshold}; refused to decrypt")
        t = self.plain_modulus
        total = state.added[listed[0]]
        for u in listed[1:]:  # a subset of the accepted uploads: one the server withdrew is left out
            total = [a + c for a, c in zip(total, state.added[u], strict=True)]
        parts = [np.mod(np.asarray(c.decrypt(), dtype=np.int64), t) for c in total]
        slots = np.concatenate(parts).astype(np.uint64) if parts else np.zeros(0, np.uint64)
        self._done.add(cfg.round_id)
        del self._rounds[cfg.round_id]
        bits = t.bit_length()
        return encode(MsgType.HE_RESULT, round_id=cfg.round_id, sender=KEY_HOLDER, receiver=SERVER,
                      payload=bytes([bits]) + slots.size.to_bytes(8, "big") + pack(slots, bits))


def _verified_context(message: bytes, directory: KeyDirectory, receiver: int, who: str) -> tuple[object, bytes]:
    """(the public BFV context, the key holder's X25519 sealing key) of a signed HE_CONTEXT."""
    header, payload = _decode(who, message, expect=MsgType.HE_CONTEXT, round_id=0, receiver=receiver)
    if len(payload) < 96 or not directory.verify(KEY_HOLDER, _context_message(payload[:-64]), payload[-64:]):
        raise ProtocolError(f"{who}: the HE context is not signed by the pinned key holder (substituted); refused")
    ctx = _ts().context_from(payload[:-96])
    if ctx.is_private():
        raise ProtocolError(f"{who}: the HE context carries a secret key; refused")
    return ctx, payload[-96:-64]


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
        self._ctx, self._seal_pk = _verified_context(context_message, directory, client_id, f"client {client_id}")
        self._identity = identity
        self._prg = MaskPRG()
        self.ledger = ledger if ledger is not None else Ledger()

    def encrypt(self, cfg: HEConfig, vector: np.ndarray, *, name: str = "vector") -> bytes:
        """HE_CIPHERTEXTS: three parts — c_pk | B | P | n | count | ciphertexts of (packed slots + mask); with
        validation the key holder's part (its sealed seed) and the server's part (its share and proof share) —
        and a signature over the header and the parts' hashes.

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
        ct_part = (public_bytes(c_sk) + base.to_bytes(8, "big") + bytes([per_slot]) + cfg.length.to_bytes(8, "big")
                   + len(cts).to_bytes(4, "big") + b"".join(len(c).to_bytes(4, "big") + c for c in cts))
        parts = [ct_part, b"", b""]
        if cfg.validate:
            from secprune.secagg.he_validation import client_parts

            parts[1:] = client_parts(plain_modulus=t, round_id=cfg.round_id, client=self.id, x=vector,
                                     kh_pk=self._seal_pk)
        header = Header(MsgType.HE_CIPHERTEXTS, cfg.round_id, self.id, SERVER).pack()
        return header + _upload_payload(parts) + self._identity.sign(_signed_digest(header, parts))


class HEServer:
    """Checks and forwards signed uploads, asks for the verified sum, removes the masks, checks the range."""

    def __init__(self, cfg: HEConfig, context_message: bytes, *, directory: KeyDirectory,
                 server_key: X25519PrivateKey, min_contributors: int = 3) -> None:
        if public_bytes(server_key) != cfg.server_key:
            raise ValueError("server: cfg.server_key must be the public key of server_key")
        self.cfg = cfg
        self.min_contributors = min_contributors
        self._ctx, _ = _verified_context(context_message, directory, SERVER, "server")
        self.directory = directory
        self._sk = server_key
        self._c_pks: dict[int, bytes] = {}
        self._pending: dict[int, bytes] = {}  # client -> its validation part, until the checks decide
        self.uploaded: list[int] = []
        self.rejected: dict[int, str] = {}  # clients whose input failed validation, with why
        self._stage = "upload"

    def _from_key_holder(self, stage: str, message: bytes, expect: MsgType) -> Reader:
        """The payload of a key-holder message of this round, addressed to the server."""
        header, payload = _decode(f"server (he, {stage})", message, expect=expect, round_id=self.cfg.round_id,
                                  receiver=SERVER)
        if header.sender != KEY_HOLDER:
            raise ProtocolError(f"server (he, {stage}): expected from the key holder, got {party_name(header.sender)}")
        return Reader(payload)

    def _mask(self, u: int) -> np.ndarray:
        shared = self._sk.exchange(X25519PublicKey.from_public_bytes(self._c_pks[u]))
        return uniform_mod(_mask_key(shared, self.cfg, u), count=self.cfg.slots, modulus=self.cfg.plain_modulus)

    def receive(self, message: bytes) -> bytes:
        """Check one client's signed upload (all or nothing); returns the HE_FORWARD for the key holder (without
        the server's validation share, which the key holder must never see)."""
        if self._stage != "upload":
            raise ProtocolError(f"server (he, {self._stage}): ciphertexts arrived after the upload closed; rejected")
        u, c_pk, _, _, s_part = _parse_upload(self.cfg, message, self._ctx, self.directory, "server (he, upload)")
        if u in self._c_pks or u in self.rejected:
            raise ProtocolError(f"server (he, upload): replayed ciphertexts from client {u}; rejected")
        self._c_pks[u] = c_pk
        if self.cfg.validate:
            self._pending[u] = s_part  # counted once its checks pass (verify)
        else:
            self.uploaded.append(u)
        return encode(MsgType.HE_FORWARD, round_id=self.cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                      payload=strip_for_key_holder(message))

    def verify(self, message: bytes) -> bytes:
        """HE_VERIFY (the key holder's draw and share of one client's checks) -> HE_DECIDE (this server's share).
        Both shares decide: a client whose input is not a valid 0/1 vector, breaks the group rule, or does not
        encrypt what it proved, is rejected and named in ``rejected``; the others are counted."""
        from secprune.secagg import he_validation as hv

        cfg = self.cfg
        r = self._from_key_holder("verify", message, MsgType.HE_VERIFY)
        u = r.u32()
        if u not in self._pending:
            raise ProtocolError(f"server (he, verify): a check of client {u}, which has no pending upload")
        randomness = Randomness.decode(r)
        from secprune.secagg import flp

        shape = flp.shape_for(cfg.length)
        field = hv.field_for(cfg.plain_modulus)
        if not all(flp.valid_point(field, shape, p) for p in randomness.points):
            raise ProtocolError("server (he, verify): the key holder drew a query point inside the interpolation "
                                "subgroup (it would reveal wire values); refused")
        share = hv.server_view(plain_modulus=cfg.plain_modulus, round_id=cfg.round_id, client=u, length=cfg.length,
                               s_part=self._pending.pop(u))
        mine = hv.verifier_share(plain_modulus=cfg.plain_modulus, share=share, rule=cfg.rule, randomness=randomness,
                                 leader=True, slots=field.neg(self._mask(u)), base=cfg.packing[0],
                                 per_slot=cfg.packing[1])
        theirs = hv.unpack40(r.rest(), mine.size)
        why = hv.decide(plain_modulus=cfg.plain_modulus, length=cfg.length, total=field.add(mine, theirs))
        if why is None:
            self.uploaded.append(u)
        else:
            self.rejected[u] = why
        return encode(MsgType.HE_DECIDE, round_id=cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                      payload=struct.pack(">I", u) + hv.pack40(mine))

    def withdraw(self, client: int) -> None:
        """Leave out an accepted upload before the decryption request (its sender was dropped elsewhere)."""
        if self._stage != "upload":
            raise ProtocolError(f"server (he, {self._stage}): an upload withdrawn after the upload closed")
        self._pending.pop(client, None)
        if client in self.uploaded:
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
        r = self._from_key_holder("result", message, MsgType.HE_RESULT)
        bits, count = r.u8(), r.u64()
        if count != cfg.slots or bits != cfg.plain_modulus.bit_length():
            raise ProtocolError(f"server (he, result): {count} slots of {bits} bits, expected {cfg.slots}")
        slots = unpack(r.take(packed_size(count, bits)), bits, count).astype(np.uint64)
        r.done()
        t = np.uint64(cfg.plain_modulus)
        for u in sorted(self.uploaded):
            slots = (slots + (t - self._mask(u))) % t
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
    ``last_survivors``).  ``validate`` (default on; 0/1 inputs only, wider ones are not checked) makes every
    client prove its input valid to the server and key holder together (:mod:`secprune.secagg.he_validation`),
    with a session's ``rules`` (exact ones per comparison group) where given; a client whose proof fails is left
    out of the sum and named in ``rejected``.  The key holder's signed public context goes to the server and every
    client once, in the first round; every client keeps one ledger across the summer's rounds.
    """

    name = "he"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0, poly_modulus_degree: int = 4096,
                 plain_modulus_bits: int = 40, threshold: int | None = None,
                 colluders: int | float | str | None = None, dropout_budget: int | float | str | None = None,
                 min_contributors: int | None = None, dropouts: Mapping[str, Iterable[int]] | None = None,
                 threat: Threat | None = None, validate: bool | None = None) -> None:
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
        self.validate = max_value == 1 and validate is not False  # the proofs cover 0/1 inputs (masks)
        self.rejected: dict[int, str] = {}  # clients whose input failed validation, with the matrix and why
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

    def _sum_matrix(self, key: str, vectors: list[np.ndarray], rule: Rule | None = None) -> np.ndarray:
        if self._clients is None:
            self._setup()
        self._counter += 1
        digest = hashlib.sha256(self._nonce + self._counter.to_bytes(8, "big") + key.encode()).digest()
        cfg = HEConfig(round_id=int.from_bytes(digest[:8], "big"), n_clients=self.n_clients,
                       length=vectors[0].size, max_value=int(self.max_value),
                       plain_modulus=self.key_holder.plain_modulus,
                       poly_modulus_degree=self.key_holder.poly_modulus_degree,
                       server_key=public_bytes(self._server_sk), validate=self.validate,
                       rule=rule if self.validate and rule is not None else Rule())
        server = HEServer(cfg, self._context, directory=self.directory, server_key=self._server_sk,
                          min_contributors=self.threat.min_contributors)
        for i in range(self.n_clients):
            if i not in self.dropped:
                fwd = server.receive(self._send(i, SERVER, self._clients[i].encrypt(cfg, vectors[i], name=key)))
                check = self.key_holder.receive_upload(cfg, self._send(SERVER, KEY_HOLDER, fwd))
                if check is not None:  # validation: both parties' shares decide
                    decision = server.verify(self._send(KEY_HOLDER, SERVER, check))
                    self.key_holder.receive_decision(cfg, self._send(SERVER, KEY_HOLDER, decision))
        self.rejected.update({i: f"{key}: {why}" for i, why in server.rejected.items()})
        try:
            request = self._send(SERVER, KEY_HOLDER, server.decrypt_request())
            result = server.result(self._send(KEY_HOLDER, SERVER, self.key_holder.decrypt(cfg, request)))
        except SecAggAbortError as e:
            if not server.rejected:
                raise
            named = "; ".join(f"client {i} ({key}: {why})" for i, why in sorted(server.rejected.items()))
            raise SecAggAbortError(f"{e}; inputs rejected by validation: {named}") from e
        self.last_survivors = sorted(server.uploaded)
        return result


def _default_threat(n_clients: int) -> Threat:
    return _make_threat(n_clients)
