"""Client side of the pairwise protocol (Bonawitz et al., CCS 2017, Fig. 4 / Sec. 4, active-adversary variant).

:class:`PairwiseClient` is client u's state machine for one session.  Every input and output is a ``bytes``
message and every secret (identity key, X25519 keys, seeds, shares held for others) lives inside the object,
so a client can run in its own process with only a transport between it and the server.  Stages:

1. ``join(SESSION) -> ADVERTISE``: check the configuration against the safe levels and the pinned key
   directory; draw c_u (share encryption), and per epoch a mask key seed s_u^(e) and a self-mask seed b_u^(e);
   advertise c_u^PK, every s_u^PK(e) and a commitment to every b_u^(e), signed with the long-term key.
2. ``share_keys(ROSTER) -> SHARE_BUNDLE``: accept only neighbours N(u) of the configured graph whose
   advertisements verify under their pinned keys; Shamir-share every seed among the holders {u} + N(u);
   encrypt each neighbour's shares (AEAD, associated data = header and per-share commitments).
3. ``receive_share(SHARE)``: authenticate, decrypt and check each share against its commitment.
4. ``upload(epoch, source) -> MASKED ...``: y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^b, chunk by chunk
   (memory O(chunk)), each chunk MACed with the key u shares with the server.
5. ``sign_survivors(SURVIVORS) -> SURVIVORS_SIGNATURE``: the consistency check; u signs the survivor set U3
   once per epoch, after checking it names only real neighbours that delivered shares, u itself, and at
   least t of u's share holders.
6. ``unmask(UNMASK_REQUEST) -> UNMASK_RESPONSE``: only with t valid signatures of u's holders on the same U3:
   per owner, a share of b (owner in U3) or of s (owner dropped), never both.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secprune.secagg import shamir
from secprune.secagg.crypto import (
    COMMIT_BYTES,
    KIND_KEY,
    KIND_SELF,
    advertise_message,
    aead_decrypt,
    aead_encrypt,
    mac,
    mac_key,
    mask_secret_key,
    pair_mask_key,
    public_bytes,
    seed_commitment,
    self_mask_key,
    share_commitment,
    share_key,
    survivors_message,
)
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.messages import SERVER, Header, MsgType, Reader, decode, encode, party_name
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import pack, ring_dtype, ring_mask
from secprune.secagg.session import SessionConfig

__all__ = ["PairwiseClient", "SEED", "advert_size", "chunk_head", "CHUNK_HEAD"]

SEED = shamir.SECRET_BYTES
CHUNK_HEAD = struct.Struct(">IIQQB")  # epoch, matrix index, offset in matrix, entries, bits
_PT_HEAD = struct.Struct(">II")  # owner, holder inside the share ciphertext
Source = Callable[[str], np.ndarray]


def advert_size(epochs: int) -> int:
    """Bytes of an ADVERTISE payload: c_pk, E mask public keys, E seed commitments, signature."""
    return 32 + 64 * epochs + 64


def chunk_head(epoch: int, matrix: int, start: int, count: int, bits: int) -> bytes:
    return CHUNK_HEAD.pack(epoch, matrix, start, count, bits)


class PairwiseClient:
    """Client u's state machine for one session; every input and output is a ``bytes`` message."""

    def __init__(self, client_id: int, *, identity: IdentityKey, directory: KeyDirectory) -> None:
        if not 0 <= client_id < directory.n_clients:
            raise ValueError(f"client_id: expected 0..{directory.n_clients - 1}, got {client_id}")
        if identity.public != directory.keys[client_id]:
            raise ValueError(f"client {client_id}: the identity key is not the one pinned in the directory")
        self.id = client_id
        self._identity = identity
        self.directory = directory
        self.cfg: SessionConfig | None = None
        self.prg: MaskPRG | None = None
        self._stage = "join"
        self._roster: dict[int, tuple[bytes, list[bytes]]] = {}  # v -> (c_pk, s_pk per epoch)
        self._held: dict[int, np.ndarray] = {}  # owner -> (2E, LIMBS) shares at x = id + 1
        self._share_keys: dict[int, bytes] = {}  # v -> AEAD key c_uv
        self._epoch = -1  # last epoch whose upload started
        self._phase = ""  # of that epoch: uploading, uploaded, signed, done
        self._survivors: list[int] = []

    # -- persistence between messages (a Flower ClientApp runs each message in a fresh process) ------------
    def export_state(self) -> dict:
        """Everything this client holds for its session, as plain values (secrets included: keep it private).

        The identity key and the directory are not part of it: they are loaded from the client's own files."""
        if self.cfg is None:
            return {"id": self.id, "stage": self._stage}
        return {"id": self.id, "stage": self._stage, "session": self.cfg.encode(),
                "c_sk": self._c_sk.private_bytes_raw(), "s_seeds": list(self._s_seeds),
                "b_seeds": list(self._b_seeds), "roster": {v: (c, list(s)) for v, (c, s) in self._roster.items()},
                "held": {v: np.asarray(a) for v, a in self._held.items()}, "share_keys": dict(self._share_keys),
                "epoch": self._epoch, "phase": self._phase, "survivors": list(self._survivors)}

    @classmethod
    def import_state(cls, state: dict, *, identity: IdentityKey, directory: KeyDirectory) -> PairwiseClient:
        """The client :meth:`export_state` saved; derived keys are derived again."""
        client = cls(int(state["id"]), identity=identity, directory=directory)
        client._stage = state["stage"]
        if "session" not in state:
            return client
        cfg = client.cfg = SessionConfig.decode(state["session"])
        client.prg = MaskPRG(cipher=cfg.cipher)
        client._c_sk = X25519PrivateKey.from_private_bytes(state["c_sk"])
        client._s_seeds, client._b_seeds = list(state["s_seeds"]), list(state["b_seeds"])
        client._s_sks = [mask_secret_key(s, session=cfg.digest, epoch=e) for e, s in enumerate(client._s_seeds)]
        client._mac_key = mac_key(client._c_sk, cfg.server_key, client=client.id, session=cfg.digest)
        client._roster = {int(v): (c, list(s)) for v, (c, s) in state["roster"].items()}
        client._held = {int(v): np.asarray(a) for v, a in state["held"].items()}
        client._share_keys = {int(v): k for v, k in state["share_keys"].items()}
        client._epoch, client._phase = int(state["epoch"]), state["phase"]
        client._survivors = [int(v) for v in state["survivors"]]
        return client

    # -- helpers -----------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"client {self.id} ({self._stage if self._epoch < 0 else f'epoch {self._epoch} {self._phase}'})"

    def _fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"{self._where()}: {what}")

    def _decode(self, message: bytes, expect: MsgType) -> tuple[Header, bytes]:
        header, payload = decode(message, expect=expect, round_id=self.cfg.session_id, receiver=self.id)
        if header.sender != SERVER and expect != MsgType.SHARE:
            raise self._fail(f"{expect.name} must come from the server, got one from {party_name(header.sender)}")
        return header, payload

    def _sign(self, message: bytes) -> bytes:
        return self._identity.sign(message)

    @property
    def delivered(self) -> list[int]:
        """Neighbours whose shares arrived (N(u) & U2 as seen by u): the pairwise masks u adds."""
        return sorted(v for v in self._held if v != self.id)

    # -- 1. AdvertiseKeys ----------------------------------------------------------------------------------
    def join(self, message: bytes) -> bytes:
        """SESSION -> ADVERTISE: c_u^PK | s_u^PK per epoch | commitment to b_u per epoch | signature."""
        if self._stage != "join":
            raise self._fail("a second SESSION message (replay)")
        header, payload = decode(message, expect=MsgType.SESSION, round_id=None, receiver=self.id)
        if header.sender != SERVER:
            raise ProtocolError(f"client {self.id} (join): SESSION must come from the server")
        cfg = SessionConfig.decode(payload)
        if header.round_id != cfg.session_id:
            raise ProtocolError(f"client {self.id} (join): the header's session id is not the configuration's")
        if cfg.n_clients != self.directory.n_clients:
            raise ProtocolError(f"client {self.id} (join): session for {cfg.n_clients} clients, the pinned "
                                f"directory has {self.directory.n_clients}")
        try:
            cfg.validate(directory_digest=self.directory.digest)
        except ProtocolError as exc:
            raise ProtocolError(f"client {self.id} (join): refused: {exc}") from None
        self.cfg = cfg
        self.prg = MaskPRG(cipher=cfg.cipher)
        epochs = len(cfg.epochs)
        self._c_sk = X25519PrivateKey.generate()
        self._s_seeds = [os.urandom(SEED) for _ in range(epochs)]
        self._b_seeds = [os.urandom(SEED) for _ in range(epochs)]
        self._s_sks = [mask_secret_key(s, session=cfg.digest, epoch=e) for e, s in enumerate(self._s_seeds)]
        self._mac_key = mac_key(self._c_sk, cfg.server_key, client=self.id, session=cfg.digest)
        body = (public_bytes(self._c_sk) + b"".join(public_bytes(sk) for sk in self._s_sks)
                + b"".join(seed_commitment(b, session=cfg.digest, owner=self.id, epoch=e)
                           for e, b in enumerate(self._b_seeds)))
        signature = self._sign(advertise_message(body, session=cfg.digest, client=self.id))
        self._stage = "share"
        return encode(MsgType.ADVERTISE, round_id=cfg.session_id, sender=self.id, receiver=SERVER,
                      payload=body + signature)

    # -- 2. ShareKeys --------------------------------------------------------------------------------------
    def _read_roster(self, payload: bytes) -> None:
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        size = 32 + 64 * epochs
        neighbours = cfg.graph[self.id]
        r = Reader(payload)
        count = r.u32()
        if count > len(neighbours):
            raise self._fail(f"roster lists {count} clients, more than the {len(neighbours)} neighbours")
        for _ in range(count):
            v, body, signature = r.u32(), r.take(size), r.take(64)
            if v not in neighbours or v in self._roster:
                raise self._fail(f"roster lists client {v}, which is not a neighbour of client {self.id} "
                                 f"(or is listed twice)")
            if not self.directory.verify(v, advertise_message(body, session=cfg.digest, client=v), signature):
                raise self._fail(f"the keys advertised for client {v} are not signed by client {v}'s pinned "
                                 f"key (substituted or forged keys)")
            self._roster[v] = (body[:32], [body[32 + 32 * e: 64 + 32 * e] for e in range(epochs)])
        r.done()

    def share_keys(self, message: bytes) -> bytes:
        """ROSTER -> SHARE_BUNDLE: Shamir shares of every seed for each holder, encrypted to it."""
        if self._stage != "share":
            raise self._fail("ROSTER out of stage")
        _, payload = self._decode(message, MsgType.ROSTER)
        self._read_roster(payload)
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        holders = sorted([self.id, *self._roster])
        if len(holders) < cfg.threshold:
            raise SecAggAbortError(f"{self._where()}: only {len(holders)} share holders, fewer than the "
                                   f"threshold t={cfg.threshold}; session aborted")
        secrets = [s for e in range(epochs) for s in (self._b_seeds[e], self._s_seeds[e])]  # b0 s0 b1 s1 ...
        shares = shamir.split(secrets, threshold=cfg.threshold, xs=[v + 1 for v in holders])
        blobs, own_commits = [], b""
        for v, row in zip(holders, shares, strict=True):
            raw = [shamir.shares_to_bytes(row[i]) for i in range(2 * epochs)]
            commits = b"".join(share_commitment(raw[i], session=cfg.digest, owner=self.id, holder=v,
                                                epoch=i // 2, kind=i % 2) for i in range(2 * epochs))
            if v == self.id:
                self._held[v] = row
                own_commits = commits
                continue
            head = Header(MsgType.SHARE, cfg.session_id, self.id, v).pack()
            key = self._share_keys[v] = share_key(self._c_sk, self._roster[v][0], u=self.id, v=v,
                                                  session=cfg.digest)
            nonce = os.urandom(12)
            ct = aead_encrypt(cfg.aead, key, nonce, _PT_HEAD.pack(self.id, v) + b"".join(raw), head + commits)
            blob = head + commits + nonce + ct
            blobs.append(len(blob).to_bytes(4, "big") + blob)
        self._stage = "receive"
        head = Header(MsgType.SHARE_BUNDLE, cfg.session_id, self.id, SERVER).pack()
        body = len(blobs).to_bytes(4, "big") + b"".join(blobs) + own_commits
        return head + body + mac(self._mac_key, position=head, data=head + body)

    def receive_share(self, message: bytes) -> None:
        """SHARE from a neighbour (routed by the server): authenticate, decrypt, check the commitments."""
        if self._stage != "receive" or self._epoch >= 0:
            raise self._fail("SHARE out of stage (late or replayed)")
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        header, payload = self._decode(message, MsgType.SHARE)
        u = header.sender
        if u not in self._roster:
            raise self._fail(f"SHARE from {party_name(u)}, not a neighbour in the roster")
        if u in self._held:
            raise self._fail(f"replayed SHARE from client {u}")
        ncommit = 2 * epochs * COMMIT_BYTES
        if len(payload) < ncommit + 12 + 16:
            raise self._fail(f"truncated SHARE from client {u}")
        commits, nonce, ct = payload[:ncommit], payload[ncommit:ncommit + 12], payload[ncommit + 12:]
        key = self._share_keys[u]  # c_uv is symmetric: the key this client used to encrypt its shares to u
        pt = aead_decrypt(cfg.aead, key, nonce, ct, message[:20] + commits)
        if pt is None:
            raise self._fail(f"SHARE from client {u}: authentication failed (tampered, replayed into another "
                             f"session, or misaddressed)")
        if len(pt) != _PT_HEAD.size + 2 * epochs * shamir.SHARE_BYTES or _PT_HEAD.unpack_from(pt) != (u, self.id):
            raise self._fail(f"SHARE from client {u}: the ids inside the ciphertext do not match the header")
        raw = pt[_PT_HEAD.size:]
        step = shamir.SHARE_BYTES
        for i in range(2 * epochs):
            got = share_commitment(raw[i * step:(i + 1) * step], session=cfg.digest, owner=u, holder=self.id,
                                   epoch=i // 2, kind=i % 2)
            if got != commits[i * COMMIT_BYTES:(i + 1) * COMMIT_BYTES]:
                raise self._fail(f"client {u} sent shares that do not match the commitments it sent with them "
                                 f"(client {u} misbehaved)")
        self._held[u] = shamir.shares_from_bytes(raw, 2 * epochs)

    # -- 3. MaskedInputCollection -----------------------------------------------------------------------
    def _mask_keys(self, epoch: int) -> list[tuple[int, bytes]]:
        """(sign, PRG key): the self mask, then +PRG(s_uv) for v > u and -PRG(s_uv) for v < u."""
        cfg = self.cfg
        keys = [(+1, self_mask_key(self._b_seeds[epoch], session=cfg.digest, epoch=epoch))]
        for v in self.delivered:
            key = pair_mask_key(self._s_sks[epoch], self._roster[v][1][epoch], u=self.id, v=v,
                                session=cfg.digest, epoch=epoch)
            keys.append((+1 if self.id < v else -1, key))
        return keys

    def _masked_chunk(self, x: np.ndarray, keys: list[tuple[int, bytes]], stream_offset: int) -> np.ndarray:
        y = x.astype(ring_dtype(self.cfg.bits))  # a fresh copy: the caller's vector is left alone
        for sign, key in keys:
            (self.prg.add if sign > 0 else self.prg.sub)(y, key, offset=stream_offset)
        y &= y.dtype.type(ring_mask(self.cfg.bits))
        return y

    def _check_input(self, name: str, vector) -> None:
        length = dict(self.cfg.epochs[self._epoch])[name]
        shape = getattr(vector, "shape", None)
        if shape is None or len(shape) != 1 or shape[0] != length:
            raise ValueError(f"client {self.id}: {name}: expected a flat vector of {length} entries, got shape {shape}")
        dtype = np.dtype(vector.dtype)
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise ValueError(f"client {self.id}: {name}: expected an integer or bool vector, got dtype {dtype}")

    def upload(self, epoch: int, source: Source) -> Iterator[bytes]:
        """MASKED messages of ``epoch``, one per chunk; ``source(name)`` gives u's flat vector of a matrix.

        Each chunk is read, range-checked (entries in [0, max_value]), masked, packed at b bits per entry and
        MACed on its own, so the client holds O(chunk) memory whatever the model size.
        """
        cfg = self.cfg
        if self._stage != "receive" or not 0 <= epoch < len(cfg.epochs) or epoch <= self._epoch:
            raise self._fail(f"upload of epoch {epoch} out of order")
        self._epoch, self._phase = epoch, "uploading"
        return self._chunks(epoch, self._mask_keys(epoch), source)

    def _chunks(self, epoch: int, keys: list[tuple[int, bytes]], source: Source) -> Iterator[bytes]:
        cfg = self.cfg
        names = cfg.matrices(epoch)
        current, vector = -1, None
        for index, start, count, stream in cfg.chunks(epoch):
            if index != current:
                current, vector = index, source(names[index][0])
                self._check_input(names[index][0], vector)
            x = np.asarray(vector[start:start + count])
            if x.size and (int(x.min()) < 0 or int(x.max()) > cfg.max_value):
                raise ValueError(f"client {self.id}: {names[index][0]}: entries must lie in [0, {cfg.max_value}]")
            y = self._masked_chunk(x, keys, stream)
            head = Header(MsgType.MASKED, cfg.session_id, self.id, SERVER).pack()
            fixed = chunk_head(epoch, index, start, count, cfg.bits)
            body = fixed + pack(y, cfg.bits)
            del y
            yield head + body + mac(self._mac_key, position=head + fixed, data=head + body)
        self._phase = "uploaded"

    def _epoch_request(self, message: bytes, expect: MsgType, phase: str, why: str) -> tuple[int, Reader, int]:
        """(epoch, reader, count) of a server request that must find this client's epoch in ``phase``."""
        _, payload = self._decode(message, expect)
        r = Reader(payload)
        epoch = r.u32()
        if epoch != self._epoch or self._phase != phase:
            raise self._fail(f"{expect.name} of epoch {epoch} out of stage ({why})")
        count = r.u32()
        if count > self.cfg.n_clients:
            raise self._fail(f"{expect.name} lists {count} entries for {self.cfg.n_clients} clients")
        return epoch, r, count

    # -- 4. ConsistencyCheck -------------------------------------------------------------------------------
    def sign_survivors(self, message: bytes) -> bytes:
        """SURVIVORS -> SURVIVORS_SIGNATURE: sign U3 once per epoch, after checking it."""
        epoch, r, count = self._epoch_request(message, MsgType.SURVIVORS, "uploaded",
                                              "this client signs only the epoch it uploaded, once")
        ids = [r.u32() for _ in range(count)]
        r.done()
        if ids != sorted(set(ids)) or any(i >= self.cfg.n_clients for i in ids):
            raise self._fail("the survivor list has unknown, repeated or unsorted ids (fake survivors)")
        if self.id not in ids:
            raise self._fail("the survivor list omits this client, which uploaded")
        known = {self.id, *self.delivered}
        strangers = [v for v in ids if v in self.cfg.graph[self.id] and v not in known]
        if strangers:
            raise self._fail(f"survivors {strangers} are neighbours that never delivered shares to this client")
        alive = len(known.intersection(ids))
        if alive < self.cfg.threshold:
            raise SecAggAbortError(f"{self._where()}: only {alive} of this client's share holders survived, "
                                   f"fewer than t={self.cfg.threshold}; epoch aborted")
        self._survivors, self._phase = ids, "signed"
        signature = self._sign(survivors_message(ids, session=self.cfg.digest, epoch=epoch))
        return encode(MsgType.SURVIVORS_SIGNATURE, round_id=self.cfg.session_id, sender=self.id, receiver=SERVER,
                      payload=struct.pack(">I", epoch) + signature)

    # -- 5. Unmasking --------------------------------------------------------------------------------------
    def unmask(self, message: bytes) -> bytes:
        """UNMASK_REQUEST (signatures of U3) -> UNMASK_RESPONSE: per owner a share of b or of s, never both."""
        cfg = self.cfg
        epoch, r, count = self._epoch_request(message, MsgType.UNMASK_REQUEST, "signed",
                                              "before the consistency check, or replayed")
        entries = [(r.u32(), r.take(64)) for _ in range(count)]
        r.done()
        mine = survivors_message(self._survivors, session=cfg.digest, epoch=epoch)
        holders = {self.id, *self.delivered}.intersection(self._survivors)
        confirmed: set[int] = set()
        for signer, signature in entries:
            if signer not in holders or signer in confirmed:
                continue  # only distinct signatures of this client's own share holders count
            if not self.directory.verify(signer, mine, signature):
                raise self._fail(f"the survivor set signature attributed to client {signer} does not verify "
                                 f"(split view or forged consistency check)")
            confirmed.add(signer)
            if len(confirmed) >= cfg.threshold:
                break
        if len(confirmed) < cfg.threshold:
            raise SecAggAbortError(f"{self._where()}: only {len(confirmed)} of this client's share holders "
                                   f"signed the survivor set, fewer than t={cfg.threshold}; no share revealed")
        self._phase = "done"
        survivors = set(self._survivors)
        out = []
        for owner in sorted(self._held):
            kind = KIND_SELF if owner in survivors else KIND_KEY
            out.append(struct.pack(">BI", kind, owner) + shamir.shares_to_bytes(self._held[owner][2 * epoch + kind]))
        head = Header(MsgType.UNMASK_RESPONSE, cfg.session_id, self.id, SERVER).pack()
        fixed = struct.pack(">I", epoch)
        body = fixed + len(out).to_bytes(4, "big") + b"".join(out)
        return head + body + mac(self._mac_key, position=head + fixed, data=head + body)

