"""Client side of the pairwise protocol (Bonawitz et al., CCS 2017, Fig. 4 / Sec. 4, active-adversary variant).

:class:`PairwiseClient` is client u's state machine for one session.  Every input and output is a ``bytes``
message and every secret (identity key, X25519 keys, seeds, nonces, shares held for others) lives inside the
object, so a client can run in its own process with only a transport between it and the server.  Stages:

1. ``join(SESSION) -> ADVERTISE``: check the configuration against this client's own :class:`Threat` and the
   pinned key directory (a layout that names an input twice or not canonically is refused); draw c_u, and per
   epoch a mask key seed s_u^(e) and a self-mask seed b_u^(e), and a graph nonce r_u; advertise c_u^PK, every
   s_u^PK(e), a commitment to every b_u^(e) and a commitment to r_u, signed with the long-term key.
2. Sparse graphs only: ``reveal(COMMITS) -> REVEAL``: the server lists every member's signed commitment (the
   member set is fixed before any nonce is known); u checks them, counts the draw in its ledger and reveals
   r_u.  The ring order is the hash of all revealed nonces: the server cannot choose the neighbours.
3. ``share_keys(ROSTER) -> SHARE_BUNDLE``: check every revealed nonce (sparse), compute N(u), accept only
   neighbours whose advertisements verify under their pinned keys; Shamir-share every seed among the holders
   {u} + N(u); encrypt each holder's shares under a fresh ephemeral key (the dealer keeps it, to open that one
   message if the holder complains).
4. ``receive_share(SHARE)``: decrypt, check the commitments.  A bad share is not fatal: the dealer is set aside
   and ``acknowledge() -> SHARES_ACK`` carries a signed complaint quoting the SHARE message.
   ``open_shares(OPEN_REQUEST) -> OPEN``: a dealer accused by a holder's signed complaint opens that one
   message (its ephemeral key), so the server can tell who lied.  ``confirm(CONFIRM)``: the accepted
   sharers U2, without the excluded cheaters; u masks only with those.
5. ``upload(epoch, source) -> MASKED ...``: every input of the epoch is first recorded as spent in the ledger
   (refused if it was released before), then y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^b, chunk by chunk
   (memory O(chunk)), each chunk MACed with the key u shares with the server.
6. ``sign_survivors(SURVIVORS) -> SURVIVORS_SIGNATURE``: the consistency check; u signs the survivor set U3
   once per epoch, after checking it names only accepted clients, u itself, at least t of u's share holders and
   at least the minimum number of contributors.
7. ``unmask(UNMASK_REQUEST) -> UNMASK_RESPONSE``: only with t valid signatures of u's holders on the same U3:
   per owner, a share of b (owner in U3) or of s (owner dropped), never both.
"""

from __future__ import annotations

import hashlib
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
    ack_message,
    advertise_message,
    aead_decrypt,
    aead_encrypt,
    graph_commitment,
    graph_seed,
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
from secprune.secagg.graph import harary
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.ledger import Ledger, content_digest
from secprune.secagg.messages import SERVER, Header, MsgType, Reader, decode, encode, party_name
from secprune.secagg.params import Threat, check_pairwise, threat
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import pack, ring_dtype, ring_mask
from secprune.secagg.session import SessionConfig

__all__ = ["PairwiseClient", "SEED", "NONCE", "advert_size", "chunk_head", "CHUNK_HEAD",
           "parse_advert", "parse_ack", "open_share"]

SEED = shamir.SECRET_BYTES
NONCE = 16  # graph nonce r_u
CHUNK_HEAD = struct.Struct(">IIQQB")  # epoch, matrix index, offset in matrix, entries, bits
_PT_HEAD = struct.Struct(">II")  # owner, holder inside the share ciphertext
Source = Callable[[str], np.ndarray]


def advert_size(epochs: int) -> int:
    """Bytes of an ADVERTISE payload: keys (c_pk, E mask public keys, E seed commitments), graph commitment,
    signature."""
    return 32 + 64 * epochs + 32 + 64


def parse_advert(payload: bytes, epochs: int) -> tuple[bytes, bytes, bytes]:
    """(keys, graph commitment, signature) of an ADVERTISE payload of the right size."""
    keys = payload[:32 + 64 * epochs]
    return keys, payload[len(keys):len(keys) + 32], payload[len(keys) + 32:]


def chunk_head(epoch: int, matrix: int, start: int, count: int, bits: int) -> bytes:
    return CHUNK_HEAD.pack(epoch, matrix, start, count, bits)


def parse_ack(payload: bytes) -> tuple[list[tuple[int, bytes]], bytes, bytes]:
    """(complaints [(dealer, SHARE message)], signed body, signature) of a SHARES_ACK payload."""
    r = Reader(payload)
    complaints = []
    for _ in range(r.u32()):
        dealer = r.u32()
        complaints.append((dealer, r.take(r.u32())))
    body = payload[:r.pos]
    signature = r.take(64)
    r.done()
    return complaints, body, signature


def open_share(message: bytes, esk: bytes, holder_pk: bytes, *, session: bytes, commits_expected: bytes,
               epochs: int, aead: str) -> str | None:
    """Replay a holder's checks on one SHARE message with the dealer's opened ephemeral key: None if the share
    is good, else what is wrong with it.  Used by the server to settle a complaint."""
    head = Header(*_header_fields(message))
    ncommit = 2 * epochs * COMMIT_BYTES
    body = message[20:]
    commits, epk, nonce, ct = body[:ncommit], body[ncommit:ncommit + 32], body[ncommit + 32:ncommit + 44], \
        body[ncommit + 44:]
    try:
        esk_key = X25519PrivateKey.from_private_bytes(esk)
    except ValueError:
        return "the opened key is not an X25519 key"
    if public_bytes(esk_key) != epk:
        return "the opened key is not the one the dealer used"
    if commits != commits_expected:
        return "the commitments sent to the holder differ from those the dealer gave the server"
    key = share_key(esk_key, holder_pk, dealer=head.sender, holder=head.receiver, session=session)
    pt = aead_decrypt(aead, key, nonce, ct, message[:20] + commits + epk)
    if pt is None:
        return "the ciphertext does not decrypt under the dealer's own key"
    return _share_problem(pt, commits, session=session, dealer=head.sender, holder=head.receiver, epochs=epochs)


def _header_fields(message: bytes) -> tuple:
    from secprune.secagg.messages import HEADER

    _, _, mtype, rid, sender, receiver = HEADER.unpack_from(message)
    return MsgType(mtype), rid, sender, receiver


def _share_problem(pt: bytes, commits: bytes, *, session: bytes, dealer: int, holder: int, epochs: int) -> str | None:
    """None if a decrypted SHARE plaintext carries the right ids and matches its commitments."""
    if len(pt) != _PT_HEAD.size + 2 * epochs * shamir.SHARE_BYTES or _PT_HEAD.unpack_from(pt) != (dealer, holder):
        return "the ids inside the ciphertext do not match the header"
    raw, step = pt[_PT_HEAD.size:], shamir.SHARE_BYTES
    for i in range(2 * epochs):
        got = share_commitment(raw[i * step:(i + 1) * step], session=session, owner=dealer, holder=holder,
                               epoch=i // 2, kind=i % 2)
        if got != commits[i * COMMIT_BYTES:(i + 1) * COMMIT_BYTES]:
            return "the shares do not match the commitments sent with them"
    return None


class PairwiseClient:
    """Client u's state machine for one session; every input and output is a ``bytes`` message.

    ``threat`` is what this client requires of any session (default: :func:`~secprune.secagg.params.threat` of
    the directory's size); ``ledger`` its record of released inputs, shared by all its sessions (default: a
    fresh in-memory one, for simulations).
    """

    def __init__(self, client_id: int, *, identity: IdentityKey, directory: KeyDirectory,
                 threat: Threat | None = None, ledger: Ledger | None = None) -> None:
        if not 0 <= client_id < directory.n_clients:
            raise ValueError(f"client_id: expected 0..{directory.n_clients - 1}, got {client_id}")
        if identity.public != directory.keys[client_id]:
            raise ValueError(f"client {client_id}: the identity key is not the one pinned in the directory")
        self.id = client_id
        self._identity = identity
        self.directory = directory
        self.threat = threat if threat is not None else _default_threat(directory.n_clients)
        self.ledger = ledger if ledger is not None else Ledger()
        self.cfg: SessionConfig | None = None
        self.prg: MaskPRG | None = None
        self._stage = "join"
        self._members: list[int] = []  # U1 as committed (sparse graphs)
        self._commits: dict[int, tuple[bytes, bytes]] = {}  # v -> (hash of its keys, graph commitment)
        self._neighbours: frozenset[int] = frozenset()
        self._roster: dict[int, tuple[bytes, list[bytes]]] = {}  # v -> (c_pk, s_pk per epoch)
        self._held: dict[int, np.ndarray] = {}  # owner -> (2E, LIMBS) shares at x = id + 1
        self._esks: dict[int, bytes] = {}  # holder -> ephemeral key of the SHARE sent to it (to open it)
        self._sent: dict[int, bytes] = {}  # holder -> SHA-256 of that SHARE message
        self._opened: set[int] = set()
        self._complaints: dict[int, bytes] = {}  # dealer -> its bad SHARE message
        self._accepted: list[int] = []  # U2 from CONFIRM
        self._epoch = -1  # last epoch whose upload started
        self._phase = ""  # of that epoch: uploading, uploaded, signed, done
        self._survivors: list[int] = []

    # -- persistence between messages (a Flower ClientApp runs each message in a fresh process) ------------
    def export_state(self) -> dict:
        """Everything this client holds for its session, as plain values (secrets included: keep it private).

        The identity key, the directory, the threat and the ledger are not part of it: they are the client's
        own, loaded from its own files and flags."""
        if self.cfg is None:
            return {"id": self.id, "stage": self._stage}
        return {"id": self.id, "stage": self._stage, "session": self.cfg.encode(),
                "c_sk": self._c_sk.private_bytes_raw(), "s_seeds": list(self._s_seeds),
                "b_seeds": list(self._b_seeds), "nonce": self._nonce, "members": list(self._members),
                "commits": {v: list(c) for v, c in self._commits.items()}, "neighbours": sorted(self._neighbours),
                "roster": {v: (c, list(s)) for v, (c, s) in self._roster.items()},
                "held": {v: np.asarray(a) for v, a in self._held.items()}, "esks": dict(self._esks),
                "sent": dict(self._sent), "opened": sorted(self._opened), "complaints": dict(self._complaints),
                "accepted": list(self._accepted), "epoch": self._epoch, "phase": self._phase,
                "survivors": list(self._survivors)}

    @classmethod
    def import_state(cls, state: dict, *, identity: IdentityKey, directory: KeyDirectory,
                     threat: Threat | None = None, ledger: Ledger | None = None) -> PairwiseClient:
        """The client :meth:`export_state` saved; derived keys are derived again."""
        client = cls(int(state["id"]), identity=identity, directory=directory, threat=threat, ledger=ledger)
        client._stage = state["stage"]
        if "session" not in state:
            return client
        cfg = client.cfg = SessionConfig.decode(state["session"])
        client.prg = MaskPRG(cipher=cfg.cipher)
        client._c_sk = X25519PrivateKey.from_private_bytes(state["c_sk"])
        client._s_seeds, client._b_seeds = list(state["s_seeds"]), list(state["b_seeds"])
        client._nonce = state["nonce"]
        client._s_sks = [mask_secret_key(s, session=cfg.digest, epoch=e) for e, s in enumerate(client._s_seeds)]
        client._mac_key = mac_key(client._c_sk, cfg.server_key, client=client.id, session=cfg.digest)
        client._members = [int(v) for v in state["members"]]
        client._commits = {int(v): (c[0], c[1]) for v, c in state["commits"].items()}
        client._neighbours = frozenset(int(v) for v in state["neighbours"])
        client._roster = {int(v): (c, list(s)) for v, (c, s) in state["roster"].items()}
        client._held = {int(v): np.asarray(a) for v, a in state["held"].items()}
        client._esks = {int(v): k for v, k in state["esks"].items()}
        client._sent = {int(v): h for v, h in state["sent"].items()}
        client._opened = {int(v) for v in state["opened"]}
        client._complaints = {int(v): m for v, m in state["complaints"].items()}
        client._accepted = [int(v) for v in state["accepted"]]
        client._epoch, client._phase = int(state["epoch"]), state["phase"]
        client._survivors = [int(v) for v in state["survivors"]]
        return client

    # -- helpers -----------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"client {self.id} ({self._stage if self._epoch < 0 else f'epoch {self._epoch} {self._phase}'})"

    def _fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"{self._where()}: {what}")

    def _decode(self, message: bytes, expect: MsgType) -> tuple[Header, bytes]:
        try:
            header, payload = decode(message, expect=expect, round_id=self.cfg.session_id, receiver=self.id)
        except ProtocolError as exc:  # name this party and its stage
            raise self._fail(f"{expect.name} refused: {exc}") from None
        if header.sender != SERVER and expect != MsgType.SHARE:
            raise self._fail(f"{expect.name} must come from the server, got one from {party_name(header.sender)}")
        return header, payload

    def _listing(self, message: bytes, expect: MsgType, stage: str, why: str) -> tuple[Reader, int]:
        """(reader after the count, count) of a server message listing clients, accepted only in ``stage``."""
        if self._stage != stage:
            raise self._fail(f"{expect.name} out of stage ({why})")
        _, payload = self._decode(message, expect)
        r = Reader(payload)
        count = r.u32()
        if count > self.cfg.n_clients:
            raise self._fail(f"{expect.name} lists {count} clients for {self.cfg.n_clients}")
        return r, count

    def _sign(self, message: bytes) -> bytes:
        return self._identity.sign(message)

    @property
    def sparse(self) -> bool:
        return bool(self.cfg is not None and self.cfg.degree)

    @property
    def delivered(self) -> list[int]:
        """Neighbours whose shares arrived and passed every check, and that the server confirmed (N(u) & U2):
        the pairwise masks u adds."""
        accepted = set(self._accepted) if self._accepted else None  # before CONFIRM: every valid share
        return sorted(v for v in self._held if v != self.id and (accepted is None or v in accepted))

    # -- 1. AdvertiseKeys ----------------------------------------------------------------------------------
    def join(self, message: bytes) -> bytes:
        """SESSION -> ADVERTISE: keys (c_pk, s_pk per epoch, b commitments) | graph commitment | signature."""
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
            cfg.validate(directory_digest=self.directory.digest, threat=self.threat)
        except ProtocolError as exc:
            raise ProtocolError(f"client {self.id} (join): refused: {exc}") from None
        self.cfg = cfg
        self.prg = MaskPRG(cipher=cfg.cipher)
        epochs = len(cfg.epochs)
        self._c_sk = X25519PrivateKey.generate()
        self._s_seeds = [os.urandom(SEED) for _ in range(epochs)]
        self._b_seeds = [os.urandom(SEED) for _ in range(epochs)]
        self._nonce = os.urandom(NONCE)
        self._s_sks = [mask_secret_key(s, session=cfg.digest, epoch=e) for e, s in enumerate(self._s_seeds)]
        self._mac_key = mac_key(self._c_sk, cfg.server_key, client=self.id, session=cfg.digest)
        keys = (public_bytes(self._c_sk) + b"".join(public_bytes(sk) for sk in self._s_sks)
                + b"".join(seed_commitment(b, session=cfg.digest, owner=self.id, epoch=e)
                           for e, b in enumerate(self._b_seeds)))
        commit = graph_commitment(self._nonce, session=cfg.digest, client=self.id)
        signature = self._sign(advertise_message(hashlib.sha256(keys).digest(), commit, session=cfg.digest,
                                                 client=self.id))
        self._stage = "commits" if self.sparse else "share"
        return encode(MsgType.ADVERTISE, round_id=cfg.session_id, sender=self.id, receiver=SERVER,
                      payload=keys + commit + signature)

    # -- 2. the graph (sparse graphs only) -------------------------------------------------------------------
    def reveal(self, message: bytes) -> bytes:
        """COMMITS (every member's signed graph commitment) -> REVEAL (this client's nonce)."""
        r, count = self._listing(message, MsgType.COMMITS, "commits", "a complete-graph session has none, or a replay")
        cfg = self.cfg
        members = []
        for _ in range(count):
            v, keys_hash, commit, signature = r.u32(), r.take(32), r.take(32), r.take(64)
            if not self.directory.verify(v, advertise_message(keys_hash, commit, session=cfg.digest, client=v),
                                         signature):
                raise self._fail(f"the graph commitment listed for client {v} is not signed by its pinned key")
            members.append(v)
            self._commits[v] = (keys_hash, commit)
        r.done()
        if members != sorted(set(members)) or self.id not in members:
            raise self._fail("the member list has repeated or unsorted ids, or omits this client")
        if self._commits[self.id][1] != graph_commitment(self._nonce, session=cfg.digest, client=self.id):
            raise self._fail("the member list carries another commitment for this client")
        try:  # the server may have left clients out: the session must still be safe for those that remain
            check_pairwise(n_clients=len(members), degree=cfg.degree, threshold=cfg.threshold,
                           min_contributors=cfg.min_contributors, threat=self.threat)
        except ValueError as exc:
            raise self._fail(f"refused: {exc} (the server committed {len(members)} members)") from None
        self.ledger.draw(cfg.digest, who=f"client {self.id}")
        self._members = members
        self._stage = "share"
        return encode(MsgType.REVEAL, round_id=cfg.session_id, sender=self.id, receiver=SERVER, payload=self._nonce)

    # -- 3. ShareKeys --------------------------------------------------------------------------------------
    def _read_roster(self, payload: bytes) -> None:
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        r = Reader(payload)
        if self.sparse:
            reveals = {}
            for _ in range(r.u32()):
                v, nonce = r.u32(), r.take(NONCE)
                if v not in self._commits or v in reveals:
                    raise self._fail(f"a nonce revealed for client {v}, which is not a committed member (or twice)")
                if graph_commitment(nonce, session=cfg.digest, client=v) != self._commits[v][1]:
                    raise self._fail(f"client {v}'s revealed nonce does not match its signed commitment")
                reveals[v] = nonce
            if sorted(reveals) != self._members:
                raise self._fail(f"nonces of {sorted(set(self._members) - set(reveals))} are missing: the graph "
                                 f"must be drawn from every committed member")
            self._neighbours = harary(self._members, degree=cfg.degree,
                                      seed=graph_seed(reveals, session=cfg.digest))[self.id]
        else:
            self._neighbours = frozenset(range(cfg.n_clients)) - {self.id}
        count = r.u32()
        if count > len(self._neighbours):
            raise self._fail(f"roster lists {count} clients, more than the {len(self._neighbours)} neighbours")
        size = advert_size(epochs)
        for _ in range(count):
            v, advert = r.u32(), r.take(size)
            keys, commit, signature = parse_advert(advert, epochs)
            if v not in self._neighbours or v in self._roster:
                raise self._fail(f"roster lists client {v}, which is not a neighbour of client {self.id} "
                                 f"(or is listed twice)")
            keys_hash = hashlib.sha256(keys).digest()
            if not self.directory.verify(v, advertise_message(keys_hash, commit, session=cfg.digest, client=v),
                                         signature):
                raise self._fail(f"the keys advertised for client {v} are not signed by client {v}'s pinned "
                                 f"key (substituted or forged keys)")
            if self.sparse and self._commits[v][0] != keys_hash:
                raise self._fail(f"the keys listed for client {v} are not those it committed to")
            self._roster[v] = (keys[:32], [keys[32 + 32 * e: 64 + 32 * e] for e in range(epochs)])
        r.done()
        if self.sparse and set(self._roster) != set(self._neighbours):
            raise self._fail(f"the roster omits neighbours {sorted(self._neighbours - set(self._roster))}, which "
                             f"all committed")

    def share_keys(self, message: bytes) -> bytes:
        """ROSTER -> SHARE_BUNDLE: Shamir shares of every seed for each holder, each encrypted and signed."""
        if self._stage != "share":
            raise self._fail("ROSTER out of stage")
        _, payload = self._decode(message, MsgType.ROSTER)
        self._read_roster(payload)
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        holders = sorted([self.id, *self._roster])
        if len(holders) < max(cfg.threshold, cfg.min_contributors):
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
            esk = X25519PrivateKey.generate()
            epk = public_bytes(esk)
            key = share_key(esk, self._roster[v][0], dealer=self.id, holder=v, session=cfg.digest)
            nonce = os.urandom(12)
            ct = aead_encrypt(cfg.aead, key, nonce, _PT_HEAD.pack(self.id, v) + b"".join(raw), head + commits + epk)
            blob = head + commits + epk + nonce + ct
            self._esks[v] = esk.private_bytes_raw()
            self._sent[v] = hashlib.sha256(blob).digest()
            blobs.append(len(blob).to_bytes(4, "big") + blob)
        self._stage = "receive"
        head = Header(MsgType.SHARE_BUNDLE, cfg.session_id, self.id, SERVER).pack()
        body = len(blobs).to_bytes(4, "big") + b"".join(blobs) + own_commits
        return head + body + mac(self._mac_key, position=head, data=head + body)

    def receive_share(self, message: bytes) -> None:
        """SHARE from a neighbour (routed by the server): decrypt, check the commitments.  A share that fails is
        set aside for a complaint (:meth:`acknowledge`); the server settles it against the SHARE the dealer put in
        its MACed bundle, and the dealer opens only a SHARE it sent."""
        if self._stage != "receive":
            raise self._fail("SHARE out of stage (late or replayed)")
        cfg, epochs = self.cfg, len(self.cfg.epochs)
        header, _ = self._decode(message, MsgType.SHARE)
        u = header.sender
        if u not in self._roster:
            raise self._fail(f"SHARE from {party_name(u)}, not a neighbour in the roster")
        if u in self._held or u in self._complaints:
            raise self._fail(f"replayed SHARE from client {u}")
        ncommit = 2 * epochs * COMMIT_BYTES
        if len(message) < 20 + ncommit + 32 + 12 + 16:
            raise self._fail(f"truncated SHARE from client {u}")
        data = message
        body = data[20:]
        commits, epk, nonce, ct = body[:ncommit], body[ncommit:ncommit + 32], body[ncommit + 32:ncommit + 44], \
            body[ncommit + 44:]
        try:
            key = share_key(self._c_sk, epk, dealer=u, holder=self.id, session=cfg.digest)
        except ValueError:
            key = None
        pt = None if key is None else aead_decrypt(cfg.aead, key, nonce, ct, data[:20] + commits + epk)
        problem = "the ciphertext does not decrypt" if pt is None else _share_problem(
            pt, commits, session=cfg.digest, dealer=u, holder=self.id, epochs=epochs)
        if problem is not None:  # the server settles it against the SHARE u put in its MACed bundle
            self._complaints[u] = message
            return
        self._held[u] = shamir.shares_from_bytes(pt[_PT_HEAD.size:], 2 * epochs)

    def acknowledge(self) -> bytes:
        """SHARES_ACK: this holder's signed complaints about dealers whose shares failed (may be none)."""
        if self._stage != "receive":
            raise self._fail("shares acknowledged out of stage")
        body = len(self._complaints).to_bytes(4, "big") + b"".join(
            struct.pack(">II", v, len(m)) + m for v, m in sorted(self._complaints.items()))
        signature = self._sign(ack_message(body, session=self.cfg.digest, client=self.id))
        self._stage = "ack"
        return encode(MsgType.SHARES_ACK, round_id=self.cfg.session_id, sender=self.id, receiver=SERVER,
                      payload=body + signature)

    def open_shares(self, message: bytes) -> bytes:
        """OPEN_REQUEST (holders' signed complaints about this dealer) -> OPEN (the ephemeral key of each SHARE
        named, so the server can check it).  Only for a SHARE this client sent, once per holder."""
        if self._stage != "ack":
            raise self._fail("OPEN_REQUEST out of stage")
        _, payload = self._decode(message, MsgType.OPEN_REQUEST)
        r = Reader(payload)
        out = []
        count = r.u32()
        if count > len(self._sent):
            raise self._fail(f"OPEN_REQUEST names {count} complaints, more than the {len(self._sent)} holders")
        for _ in range(count):
            ack = r.take(r.u32())
            try:
                header, inner = decode(ack, expect=MsgType.SHARES_ACK, round_id=self.cfg.session_id, receiver=SERVER)
                complaints, body, signature = parse_ack(inner)
            except ProtocolError as exc:
                raise self._fail(f"OPEN_REQUEST carries a malformed acknowledgement ({exc})") from None
            holder = header.sender
            if not self.directory.verify(holder, ack_message(body, session=self.cfg.digest, client=holder),
                                         signature):
                raise self._fail(f"the complaint attributed to client {holder} is not signed by it; nothing opened")
            mine = [m for dealer, m in complaints if dealer == self.id]
            if holder not in self._sent or len(mine) != 1 or hashlib.sha256(mine[0]).digest() != self._sent[holder]:
                raise self._fail(f"client {holder}'s complaint does not name the SHARE this client sent it")
            if holder in self._opened:
                raise self._fail(f"the SHARE to client {holder} was opened already (replay)")
            self._opened.add(holder)
            out.append(struct.pack(">I", holder) + self._esks[holder])
        r.done()
        head = Header(MsgType.OPEN, self.cfg.session_id, self.id, SERVER).pack()
        body = len(out).to_bytes(4, "big") + b"".join(out)
        return head + body + mac(self._mac_key, position=head, data=head + body)

    def confirm(self, message: bytes) -> None:
        """CONFIRM: U2, the sharers the server accepted (cheaters excluded).  This client masks with its
        neighbours in U2, and refuses a U2 that keeps a dealer it complained about or drops it below t holders."""
        r, count = self._listing(message, MsgType.CONFIRM, "ack", "before the shares were acknowledged, or a replay")
        cfg = self.cfg
        accepted = [r.u32() for _ in range(count)]
        excluded = {}
        for _ in range(min(r.u32(), cfg.n_clients)):
            v, reason = r.u32(), r.u8()
            excluded[v] = reason
        r.done()
        if accepted != sorted(set(accepted)) or any(v >= cfg.n_clients for v in accepted):
            raise self._fail("the accepted sharers have unknown, repeated or unsorted ids")
        if self.id not in accepted:
            why = EXCLUSION_REASONS.get(excluded.get(self.id), "no reason given")
            raise SecAggAbortError(f"{self._where()}: the server excluded this client from the session ({why})")
        kept = sorted(set(accepted) & set(self._complaints))
        if kept:
            raise self._fail(f"the server kept clients {kept}, whose shares this client reported bad; refused")
        unknown = [v for v in accepted if v != self.id and v in self._neighbours and v not in self._held]
        if unknown:
            raise self._fail(f"accepted neighbours {unknown} never delivered valid shares to this client")
        self._accepted = accepted
        holders = 1 + len(self.delivered)
        if holders < cfg.threshold or len(accepted) < cfg.min_contributors:
            raise SecAggAbortError(f"{self._where()}: {holders} share holders and {len(accepted)} sharers left, "
                                   f"fewer than t={cfg.threshold} or {cfg.min_contributors} contributors; aborted")
        self._stage = "ready"

    # -- 5. MaskedInputCollection -----------------------------------------------------------------------
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

    def _check_input(self, name: str, vector, length: int) -> None:
        shape = getattr(vector, "shape", None)
        if shape is None or len(shape) != 1 or shape[0] != length:
            raise ValueError(f"client {self.id}: {name}: expected a flat vector of {length} entries, got shape {shape}")
        dtype = np.dtype(vector.dtype)
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise ValueError(f"client {self.id}: {name}: expected an integer or bool vector, got dtype {dtype}")

    def upload(self, epoch: int, source: Source) -> Iterator[bytes]:
        """MASKED messages of ``epoch``, one per chunk; ``source(name)`` gives u's flat vector of a matrix.

        Before any chunk leaves, every input of the epoch is range-checked (entries in [0, max_value]) and
        recorded as spent in the ledger, all or none (an input released before is refused).  Each chunk is then
        read, masked, packed at b bits per entry and MACed on its own, so the client holds O(chunk) memory
        whatever the model size.
        """
        cfg = self.cfg
        if self._stage != "ready" or not 0 <= epoch < len(cfg.epochs) or epoch <= self._epoch:
            raise self._fail(f"upload of epoch {epoch} out of order")
        vectors, inputs = [], []
        for name, length in cfg.epochs[epoch]:
            vector = source(name)  # read once: the same object is digested, then masked chunk by chunk
            self._check_input(name, vector, length)
            inputs.append((name, content_digest(vector, max_value=cfg.max_value, who=f"client {self.id}: {name}")))
            vectors.append(vector)
        self.ledger.spend(inputs, who=f"client {self.id}")
        self.ledger.settle(cfg.digest)
        self._epoch, self._phase = epoch, "uploading"
        return self._chunks(epoch, self._mask_keys(epoch), vectors)

    def _chunks(self, epoch: int, keys: list[tuple[int, bytes]], vectors: list) -> Iterator[bytes]:
        cfg = self.cfg
        for index, start, count, stream in cfg.chunks(epoch):
            x = np.asarray(vectors[index][start:start + count])
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

    # -- 6. ConsistencyCheck -------------------------------------------------------------------------------
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
        outsiders = sorted(set(ids) - set(self._accepted))
        if outsiders:
            raise self._fail(f"survivors {outsiders} were not among the accepted sharers")
        known = {self.id, *self.delivered}
        strangers = [v for v in ids if v in self._neighbours and v not in known]
        if strangers:
            raise self._fail(f"survivors {strangers} are neighbours that never delivered shares to this client")
        alive = len(known.intersection(ids))
        if alive < self.cfg.threshold:
            raise SecAggAbortError(f"{self._where()}: only {alive} of this client's share holders survived, "
                                   f"fewer than t={self.cfg.threshold}; epoch aborted")
        if len(ids) < self.cfg.min_contributors:
            raise SecAggAbortError(f"{self._where()}: {len(ids)} survivors, fewer than the "
                                   f"{self.cfg.min_contributors} contributors every released sum needs; epoch aborted")
        self._survivors, self._phase = ids, "signed"
        signature = self._sign(survivors_message(ids, session=self.cfg.digest, epoch=epoch))
        return encode(MsgType.SURVIVORS_SIGNATURE, round_id=self.cfg.session_id, sender=self.id, receiver=SERVER,
                      payload=struct.pack(">I", epoch) + signature)

    # -- 7. Unmasking --------------------------------------------------------------------------------------
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
        for owner in [self.id, *self.delivered]:
            kind = KIND_SELF if owner in survivors else KIND_KEY
            out.append(struct.pack(">BI", kind, owner) + shamir.shares_to_bytes(self._held[owner][2 * epoch + kind]))
        head = Header(MsgType.UNMASK_RESPONSE, cfg.session_id, self.id, SERVER).pack()
        fixed = struct.pack(">I", epoch)
        body = fixed + len(out).to_bytes(4, "big") + b"".join(out)
        return head + body + mac(self._mac_key, position=head + fixed, data=head + body)


#: why the server excluded a client (CONFIRM); the server's own log says the same in words
EXCLUSION_REASONS = {1: "a share it dealt failed its holder's checks", 2: "it complained about a good share",
                     3: "it did not open a share it was accused of", 4: "it did not acknowledge its shares",
                     5: "it cheated in an earlier session"}


def _default_threat(n_clients: int) -> Threat:
    return threat(n_clients)
