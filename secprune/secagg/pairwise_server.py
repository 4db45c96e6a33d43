"""Server side of the pairwise protocol (Bonawitz et al., CCS 2017, Fig. 4 / Sec. 4, active-adversary variant).

:class:`PairwiseServer` is a state machine over ``bytes`` messages.  It accepts a message only in its own
stage (a late ADVERTISE or a MASKED chunk after the upload closed is rejected and changes nothing), checks
every signature against the pinned key directory and every upload's MAC (a relabelled or forged upload is
rejected, naming the claimed sender), and checks every revealed share against its dealer's commitment (a bad
share is rejected, naming its holder).  Stages:

advertise -> [commits() -> reveal ->] rosters() -> share -> close_shares() -> ack -> close_acks() ->
[open -> close_open() ->] per epoch e: upload(e) -> close_upload() -> consistency(e) -> close_consistency()
-> unmask(e) -> finish() -> upload(e + 1) ... -> done.

A sparse graph is drawn from the members' revealed nonces (every committed member must reveal, so the server
cannot pick a subset either).  Holders complain about shares that fail their checks, quoting the SHARE (which
must be the one the dealer put in its MACed bundle); the accused dealer opens that one message (its ephemeral
key) and the server replays the holder's checks: the dealer of a bad share, a holder that complained about a
good one, and a dealer that does not open are excluded, named in ``excluded``, and the session goes on with the
others (CONFIRM tells every client the accepted sharers U2).

Uploads arrive chunk by chunk, in order; a client's checked chunks are kept packed (b bits per entry) and
added to the epoch's running sum, chunk by chunk, when its last chunk arrives, so a client whose stream
breaks counts as a dropout and its partial upload is discarded.  ``finish`` rebuilds the self-mask seeds of
the survivors U3 and the mask keys of the dropped clients U2 \\ U3 (checking each against its commitment or
advertised public key), removes the masks and refuses a sum outside [0, |U3| * max_value] or over fewer than
the minimum number of contributors.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secprune.secagg import shamir
from secprune.secagg.crypto import (
    COMMIT_BYTES,
    KIND_KEY,
    KIND_SELF,
    MAC_BYTES,
    ack_message,
    advertise_message,
    graph_commitment,
    graph_seed,
    mac_key,
    mac_ok,
    mask_secret_key,
    pair_mask_key,
    public_bytes,
    seed_commitment,
    self_mask_key,
    share_commitment,
    survivors_message,
)
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.graph import harary
from secprune.secagg.identity import KeyDirectory
from secprune.secagg.messages import HEADER, SERVER, Header, MsgType, Reader, decode, encode, party_name
from secprune.secagg.pairwise_client import (
    CHUNK_HEAD,
    EXCLUSION_REASONS,
    NONCE,
    advert_size,
    open_share,
    parse_ack,
    parse_advert,
)
from secprune.secagg.params import Threat
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import packed_size, ring_dtype, ring_mask, unpack
from secprune.secagg.session import Layout, SessionConfig

__all__ = ["PairwiseServer"]

_KIND_NAME = {KIND_SELF: "self-mask seed", KIND_KEY: "mask key"}


def _claimed(message) -> str:
    """'from <party> ' as the header claims, when there is a header to read."""
    if isinstance(message, (bytes, bytearray, memoryview)) and len(message) >= HEADER.size:
        return f"from {party_name(HEADER.unpack_from(message)[4])} "
    return ""
BAD_SHARE, FALSE_COMPLAINT, NOT_OPENED, NO_ACK, EARLIER = 1, 2, 3, 4, 5


class PairwiseServer:
    """The server's state machine for one session: routes shares, settles complaints, adds uploads, removes masks.

    ``excluded`` ({client: reason}) starts with clients excluded in earlier sessions (they are not invited).
    """

    def __init__(self, *, directory: KeyDirectory, bits: int, max_value: int, threshold: int, degree: int | None,
                 min_contributors: int, epochs: Layout, threat: Threat, cipher: str = "aes-ctr",
                 aead: str = "aes-gcm", chunk_entries: int = 1 << 22, excluded: Iterable[int] = ()) -> None:
        self._sk = X25519PrivateKey.generate()
        self.cfg = SessionConfig(n_clients=directory.n_clients, bits=bits, max_value=max_value,
                                 threshold=threshold, degree=degree or 0, min_contributors=min_contributors,
                                 epochs=tuple(tuple(m) for m in epochs), server_key=public_bytes(self._sk),
                                 directory=directory.digest, nonce=os.urandom(16), cipher=cipher, aead=aead,
                                 chunk_entries=chunk_entries)
        self.cfg.validate(directory_digest=directory.digest, threat=threat)
        self.directory = directory
        n = directory.n_clients
        self.graph: list[frozenset[int]] = [frozenset(range(n)) - {u} for u in range(n)]  # sparse: after reveals
        self.prg = MaskPRG(cipher=cipher)
        self._stage, self.epoch = "advertise", -1
        self.excluded: dict[int, int] = {int(u): EARLIER for u in excluded}
        self._adverts: dict[int, bytes] = {}  # U1: advertisement payloads
        self._reveals: dict[int, bytes] = {}
        self._mac_keys: dict[int, bytes] = {}
        self._routes: dict[int, dict[int, bytes]] = {}  # dealer -> holder -> SHARE message
        self._commits: dict[tuple[int, int], bytes] = {}  # (owner, holder) -> 2E share commitments
        self._acks: dict[int, bytes] = {}  # holder -> its SHARES_ACK message
        self._accused: dict[int, list[int]] = {}  # dealer -> complaining holders
        self._opened: set[int] = set()
        self.accepted: list[int] = []  # U2 after the complaints
        self.uploaded: list[int] = []  # U3 of the current epoch
        self.signers: list[int] = []  # U4
        self.responded: list[int] = []  # U5

    # -- helpers -----------------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        return self._stage if self.epoch < 0 else f"{self._stage}, epoch {self.epoch}"

    def _expect(self, stage: str, header: Header) -> None:
        if self._stage != stage:
            raise ProtocolError(f"server ({self.stage}): {header.type.name} from {party_name(header.sender)} "
                                f"arrived out of stage (late or early); rejected")

    def _accept(self, message: bytes, expect: MsgType, stage: str, allowed, done, what: str) -> Header:
        """The header of a message of type ``expect`` that must arrive in ``stage`` from a sender in
        ``allowed`` that is not in ``done`` (so each party's message is accepted once)."""
        try:
            header, _ = decode(message[:HEADER.size], expect=expect, round_id=self.cfg.session_id, receiver=SERVER)
        except ProtocolError as exc:  # name this party, its stage and the claimed sender
            raise ProtocolError(f"server ({self.stage}): {expect.name} {_claimed(message)}refused: {exc}") from None
        self._expect(stage, header)
        if header.sender not in allowed or header.sender in done:
            raise ProtocolError(f"server ({self.stage}): {expect.name} from {party_name(header.sender)}, {what}")
        return header

    def _abort_if_few(self, alive: Iterable[int], what: str) -> None:
        alive = list(alive)
        need = max(self.cfg.threshold, self.cfg.min_contributors)
        if len(alive) < need:
            raise SecAggAbortError(f"secure aggregation aborted at {what} ({self.stage}): {len(alive)} clients "
                                   f"left, fewer than the threshold t={self.cfg.threshold} or the "
                                   f"{self.cfg.min_contributors} contributors every sum needs")

    def _check_mac(self, message: bytes, header: Header, fixed: int, what: str) -> bytes:
        """The message without its MAC, after checking the MAC (position = header + ``fixed`` bytes)."""
        u = header.sender
        if u not in self._mac_keys or len(message) < HEADER.size + fixed + MAC_BYTES:
            raise ProtocolError(f"server ({self.stage}): {what} from {party_name(u)}: unknown sender or truncated")
        data, tag = message[:-MAC_BYTES], message[-MAC_BYTES:]
        if not mac_ok(self._mac_keys[u], position=data[:HEADER.size + fixed], data=data, tag=tag):
            raise ProtocolError(f"server ({self.stage}): {what} claiming to be from client {u} failed "
                                f"authentication (relabelled, tampered or forged); rejected")
        return data

    @property
    def sharers(self) -> list[int]:
        """U2: the clients whose share bundles arrived and that were not excluded."""
        return sorted(u for u in self._routes if u not in self.excluded)

    def holders(self, owner: int) -> list[int]:
        """Holders of ``owner``'s shares: itself and its neighbours among the accepted sharers."""
        return sorted({owner} | (self.graph[owner] & set(self.accepted)))

    def _exclude(self, client: int, reason: int) -> None:
        self.excluded.setdefault(client, reason)

    def exclusions(self) -> dict[int, str]:
        """Clients excluded from this session (cheaters and silent ones), with the reason in words."""
        return {u: EXCLUSION_REASONS[r] for u, r in sorted(self.excluded.items())}

    # -- AdvertiseKeys -------------------------------------------------------------------------------------
    def session_messages(self) -> dict[int, bytes]:
        """SESSION to every client not excluded: the configuration it checks and signs into its advertisement."""
        body = self.cfg.encode()
        return {u: encode(MsgType.SESSION, round_id=self.cfg.session_id, sender=SERVER, receiver=u, payload=body)
                for u in range(self.cfg.n_clients) if u not in self.excluded}

    def receive_advertisement(self, message: bytes) -> None:
        allowed = [u for u in range(self.cfg.n_clients) if u not in self.excluded]
        header = self._accept(message, MsgType.ADVERTISE, "advertise", allowed, self._adverts,
                              "an unknown, excluded or repeated client")
        u = header.sender
        payload = message[HEADER.size:]
        if len(payload) != advert_size(len(self.cfg.epochs)):
            raise ProtocolError(f"server ({self.stage}): ADVERTISE from client {u}: {len(payload)} bytes, "
                                f"expected {advert_size(len(self.cfg.epochs))}")
        keys, commit, signature = parse_advert(payload, len(self.cfg.epochs))
        signed = advertise_message(hashlib.sha256(keys).digest(), commit, session=self.cfg.digest, client=u)
        if not self.directory.verify(u, signed, signature):
            raise ProtocolError(f"server ({self.stage}): ADVERTISE from client {u} is not signed by its pinned "
                                f"key; rejected")
        self._adverts[u] = payload
        self._mac_keys[u] = mac_key(self._sk, keys[:32], client=u, session=self.cfg.digest)

    def _mask_pk(self, v: int, epoch: int) -> bytes:
        return self._adverts[v][32 + 32 * epoch: 64 + 32 * epoch]

    def _seed_commit(self, v: int, epoch: int) -> bytes:
        base = 32 + 32 * len(self.cfg.epochs)
        return self._adverts[v][base + 32 * epoch: base + 32 * (epoch + 1)]

    def commits(self) -> dict[int, bytes]:
        """Sparse graphs: close AdvertiseKeys; every member gets every member's signed graph commitment."""
        if self._stage != "advertise" or not self.cfg.degree:
            raise ProtocolError(f"server ({self.stage}): commitments asked out of stage or for a complete graph")
        self._abort_if_few(self._adverts, "key advertisement")
        epochs = len(self.cfg.epochs)
        entries = []
        for u in sorted(self._adverts):
            keys, commit, signature = parse_advert(self._adverts[u], epochs)
            entries.append(u.to_bytes(4, "big") + hashlib.sha256(keys).digest() + commit + signature)
        body = len(entries).to_bytes(4, "big") + b"".join(entries)
        self._stage = "reveal"
        return {u: encode(MsgType.COMMITS, round_id=self.cfg.session_id, sender=SERVER, receiver=u, payload=body)
                for u in sorted(self._adverts)}

    def receive_reveal(self, message: bytes) -> None:
        header = self._accept(message, MsgType.REVEAL, "reveal", self._adverts, self._reveals,
                              "not a committed member, or repeated")
        u = header.sender
        nonce = message[HEADER.size:]
        _, commit, _ = parse_advert(self._adverts[u], len(self.cfg.epochs))
        if len(nonce) != NONCE or graph_commitment(nonce, session=self.cfg.digest, client=u) != commit:
            raise ProtocolError(f"server ({self.stage}): client {u}'s nonce does not match its commitment; rejected")
        self._reveals[u] = nonce

    def rosters(self) -> dict[int, bytes]:
        """Close AdvertiseKeys (or the reveals): each advertiser gets its advertising neighbours' signed keys
        (and, for a sparse graph, every member's nonce, from which it computes the graph itself)."""
        head = b""
        if self.cfg.degree:
            if self._stage != "reveal":
                raise ProtocolError(f"server ({self.stage}): rosters requested out of stage")
            missing = sorted(set(self._adverts) - set(self._reveals))
            if missing:
                raise SecAggAbortError(f"secure aggregation aborted at the graph draw ({self.stage}): clients "
                                       f"{missing} committed to a nonce and did not reveal it, so the graph cannot "
                                       f"be drawn; start a session without them")
            members = sorted(self._adverts)
            seed = graph_seed(self._reveals, session=self.cfg.digest)
            for u, nbrs in harary(members, degree=self.cfg.degree, seed=seed).items():
                self.graph[u] = nbrs
            head = len(members).to_bytes(4, "big") + b"".join(u.to_bytes(4, "big") + self._reveals[u]
                                                              for u in members)
        elif self._stage != "advertise":
            raise ProtocolError(f"server ({self.stage}): rosters requested twice")
        self._abort_if_few(self._adverts, "key advertisement")
        out = {}
        for u in sorted(self._adverts):
            nbrs = sorted(v for v in self.graph[u] if v in self._adverts)
            body = b"".join(v.to_bytes(4, "big") + self._adverts[v] for v in nbrs)
            out[u] = encode(MsgType.ROSTER, round_id=self.cfg.session_id, sender=SERVER, receiver=u,
                            payload=head + len(nbrs).to_bytes(4, "big") + body)
        self._stage = "share"
        return out

    # -- ShareKeys ------------------------------------------------------------------------------------------
    def receive_share_bundle(self, message: bytes) -> None:
        header = self._accept(message, MsgType.SHARE_BUNDLE, "share", self._adverts, self._routes,
                              "which did not advertise keys or already shared")
        u = header.sender
        data = self._check_mac(message, header, 0, "SHARE_BUNDLE")
        ncommit = 2 * len(self.cfg.epochs) * COMMIT_BYTES
        r = Reader(data[HEADER.size:])
        routes, commits = {}, {}
        expected = {v for v in self.graph[u] if v in self._adverts}
        for _ in range(r.u32()):
            blob = r.take(r.u32())
            h, _ = decode(blob, expect=MsgType.SHARE, round_id=self.cfg.session_id)
            if h.sender != u or h.receiver not in expected or h.receiver in routes:
                raise ProtocolError(f"server ({self.stage}): SHARE_BUNDLE from client {u} holds a share for "
                                    f"{party_name(h.receiver)}, not one of its advertising neighbours")
            if len(blob) < HEADER.size + ncommit + 60:
                raise ProtocolError(f"server ({self.stage}): a share in client {u}'s bundle is truncated; "
                                    f"bundle rejected")
            routes[h.receiver] = blob
            commits[(u, h.receiver)] = blob[HEADER.size:HEADER.size + ncommit]
        commits[(u, u)] = r.take(ncommit)
        r.done()
        if set(routes) != expected:
            raise ProtocolError(f"server ({self.stage}): SHARE_BUNDLE from client {u} misses shares for "
                                f"{sorted(expected - set(routes))}")
        self._routes[u] = routes
        self._commits.update(commits)

    def close_shares(self) -> dict[int, list[bytes]]:
        """Close ShareKeys: route the encrypted shares among U2 (each SHARE message unchanged)."""
        if self._stage != "share":
            raise ProtocolError(f"server ({self.stage}): shares closed out of stage")
        self._abort_if_few(self._routes, "key sharing")
        out: dict[int, list[bytes]] = {v: [] for v in self._routes}
        for routes in self._routes.values():
            for v, blob in routes.items():
                if v in out:
                    out[v].append(blob)
        self._stage = "ack"
        return out

    # -- complaints ----------------------------------------------------------------------------------------
    def receive_ack(self, message: bytes) -> None:
        """A holder's signed SHARES_ACK; each complaint must quote a SHARE this server routed to it."""
        header = self._accept(message, MsgType.SHARES_ACK, "ack", self._routes, self._acks,
                              "not a sharer, or repeated")
        u = header.sender
        complaints, body, signature = parse_ack(message[HEADER.size:])
        if not self.directory.verify(u, ack_message(body, session=self.cfg.digest, client=u), signature):
            raise ProtocolError(f"server ({self.stage}): SHARES_ACK from client {u} is not signed by it; rejected")
        dealers = [v for v, _ in complaints]
        for v, share in complaints:
            if dealers.count(v) > 1 or self._routes.get(v, {}).get(u) != share:
                raise ProtocolError(f"server ({self.stage}): client {u} complains about a SHARE from client {v} "
                                    f"that this server did not route to it; rejected")
        self._acks[u] = message
        for v in dealers:
            self._accused.setdefault(v, []).append(u)

    def close_acks(self) -> dict[int, bytes]:
        """Close the acknowledgements: OPEN_REQUEST to every accused dealer (then :meth:`close_open`), or, with
        no complaint, CONFIRM to every sharer."""
        if self._stage != "ack":
            raise ProtocolError(f"server ({self.stage}): acknowledgements closed out of stage")
        for u in set(self._routes) - set(self._acks):
            self._exclude(u, NO_ACK)  # it may not hold its neighbours' shares: its masks would not match
        if not self._accused:
            return self._confirm()
        self._stage = "open"
        out = {}
        for v, holders in sorted(self._accused.items()):
            body = len(holders).to_bytes(4, "big") + b"".join(
                len(self._acks[u]).to_bytes(4, "big") + self._acks[u] for u in holders)
            out[v] = encode(MsgType.OPEN_REQUEST, round_id=self.cfg.session_id, sender=SERVER, receiver=v,
                            payload=body)
        return out

    def receive_open(self, message: bytes) -> None:
        """An accused dealer's openings; each SHARE is checked again with the opened key: the dealer of a bad
        share, or the holder that complained about a good one, is excluded."""
        header = self._accept(message, MsgType.OPEN, "open", self._accused, self._opened, "not accused, or repeated")
        v = header.sender
        data = self._check_mac(message, header, 0, "OPEN")
        r = Reader(data[HEADER.size:])
        opened = {}
        for _ in range(r.u32()):
            holder, esk = r.u32(), r.take(32)
            opened[holder] = esk
        r.done()
        if set(opened) != set(self._accused[v]):
            raise ProtocolError(f"server ({self.stage}): client {v} opened {sorted(opened)}, asked for "
                                f"{sorted(self._accused[v])}; rejected")
        self._opened.add(v)
        epochs = len(self.cfg.epochs)
        for holder, esk in opened.items():
            holder_pk = self._adverts[holder][:32]
            problem = open_share(self._routes[v][holder], esk, holder_pk, session=self.cfg.digest,
                                 commits_expected=self._commits[(v, holder)], epochs=epochs, aead=self.cfg.aead)
            self._exclude(v if problem is not None else holder, BAD_SHARE if problem is not None else FALSE_COMPLAINT)

    def close_open(self) -> dict[int, bytes]:
        """Close the openings (an accused dealer that did not open is excluded): CONFIRM to every sharer."""
        if self._stage != "open":
            raise ProtocolError(f"server ({self.stage}): openings closed out of stage")
        for v in set(self._accused) - self._opened:
            self._exclude(v, NOT_OPENED)
        return self._confirm()

    def _confirm_body(self) -> bytes:
        excluded = sorted((u, r) for u, r in self.excluded.items() if u in self._adverts)
        return (len(self.accepted).to_bytes(4, "big") + b"".join(u.to_bytes(4, "big") for u in self.accepted)
                + len(excluded).to_bytes(4, "big") + b"".join(struct.pack(">IB", u, r) for u, r in excluded))

    def _confirm(self) -> dict[int, bytes]:
        self.accepted = [u for u in sorted(self._routes) if u not in self.excluded]
        self._abort_if_few(self.accepted, "the share check")
        body = self._confirm_body()
        self._open_epoch(0)
        return {u: encode(MsgType.CONFIRM, round_id=self.cfg.session_id, sender=SERVER, receiver=u, payload=body)
                for u in sorted(self._routes)}

    # -- MaskedInputCollection ---------------------------------------------------------------------------
    def _open_epoch(self, epoch: int) -> None:
        self._stage, self.epoch = "upload", epoch
        self._chunks = self.cfg.chunks(epoch)
        self._matrices = self.cfg.matrices(epoch)
        total = sum(length for _, _, length in self._matrices)
        self._acc = np.zeros(total, ring_dtype(self.cfg.bits))
        self._staging: dict[int, tuple[int, list]] = {}  # client -> (next chunk, its packed chunks so far)
        self.uploaded, self.signers, self.responded = [], [], []
        self._signatures: dict[int, bytes] = {}
        self._shares: dict[tuple[int, int], dict[int, np.ndarray]] = {}  # (kind, owner) -> {holder: share}

    def receive_masked(self, message: bytes) -> None:
        """One chunk of a client's masked input; checked, then added to that client's staging sum."""
        header = self._accept(message, MsgType.MASKED, "upload", self.accepted, self.uploaded,
                              "which is not an accepted sharer or already uploaded")
        u = header.sender
        data = self._check_mac(message, header, CHUNK_HEAD.size, "MASKED chunk")
        epoch, index, start, count, bits = CHUNK_HEAD.unpack_from(data, HEADER.size)
        position, kept = self._staging.get(u, (0, []))
        want = self._chunks[position]
        if (epoch, index, start, count, bits) != (self.epoch, want[0], want[1], want[2], self.cfg.bits):
            raise ProtocolError(f"server ({self.stage}): MASKED chunk from client {u} is (epoch {epoch}, "
                                f"matrix {index}, offset {start}, {count} entries of {bits} bits); expected "
                                f"(epoch {self.epoch}, matrix {want[0]}, offset {want[1]}, {want[2]} entries of "
                                f"{self.cfg.bits} bits)")
        packed = memoryview(data)[HEADER.size + CHUNK_HEAD.size:]
        if len(packed) != packed_size(count, bits):
            raise ProtocolError(f"server ({self.stage}): MASKED chunk from client {u}: {len(packed)} bytes for "
                                f"{count} entries of {bits} bits")
        if len(self._chunks) == 1:  # a one-chunk upload is complete on arrival
            self._add(want[3], count, packed)
            self.uploaded.append(u)
            return
        kept.append((want[3], count, packed))
        if position + 1 < len(self._chunks):
            self._staging[u] = (position + 1, kept)  # packed chunks, b bits per entry, until the last one
            return
        for offset, size, chunk in kept:
            self._add(offset, size, chunk)
        self._staging.pop(u, None)
        self.uploaded.append(u)

    def _add(self, offset: int, count: int, packed) -> None:
        part = self._acc[offset:offset + count]
        np.add(part, unpack(packed, self.cfg.bits, count), out=part)

    def close_upload(self) -> dict[int, bytes]:
        """Close the upload: partial uploads are dropped; SURVIVORS (U3) to every member of U3."""
        if self._stage != "upload":
            raise ProtocolError(f"server ({self.stage}): upload closed out of stage")
        self._staging.clear()
        self._abort_if_few(self.uploaded, "masked input collection")
        survivors = sorted(self.uploaded)
        body = struct.pack(">II", self.epoch, len(survivors)) + b"".join(u.to_bytes(4, "big") for u in survivors)
        self._stage = "consistency"
        return {u: encode(MsgType.SURVIVORS, round_id=self.cfg.session_id, sender=SERVER, receiver=u, payload=body)
                for u in survivors}

    # -- ConsistencyCheck -------------------------------------------------------------------------------
    def receive_survivors_signature(self, message: bytes) -> None:
        header = self._accept(message, MsgType.SURVIVORS_SIGNATURE, "consistency", self.uploaded, self._signatures,
                              "not a survivor or repeated")
        u = header.sender
        r = Reader(message[HEADER.size:])
        epoch, signature = r.u32(), r.take(64)
        r.done()
        signed = survivors_message(sorted(self.uploaded), session=self.cfg.digest, epoch=self.epoch)
        if epoch != self.epoch or not self.directory.verify(u, signed, signature):
            raise ProtocolError(f"server ({self.stage}): client {u}'s signature of the survivor set does not "
                                f"verify; rejected")
        self._signatures[u] = signature
        self.signers.append(u)

    def close_consistency(self) -> dict[int, bytes]:
        """UNMASK_REQUEST to every signer, with the signatures of its own share holders."""
        if self._stage != "consistency":
            raise ProtocolError(f"server ({self.stage}): consistency check closed out of stage")
        self._abort_if_few(self._signatures, "consistency check")
        out = {}
        for u in sorted(self._signatures):
            mine = [v for v in self.holders(u) if v in self._signatures]
            body = (struct.pack(">II", self.epoch, len(mine))
                    + b"".join(v.to_bytes(4, "big") + self._signatures[v] for v in mine))
            out[u] = encode(MsgType.UNMASK_REQUEST, round_id=self.cfg.session_id, sender=SERVER, receiver=u,
                            payload=body)
        self._stage = "unmask"
        return out

    # -- Unmasking -----------------------------------------------------------------------------------------
    def receive_unmask_response(self, message: bytes) -> None:
        """A holder's shares; each checked against its dealer's commitment (all or nothing)."""
        header = self._accept(message, MsgType.UNMASK_RESPONSE, "unmask", self._signatures, self.responded,
                              "not asked or repeated")
        u = header.sender
        data = self._check_mac(message, header, 4, "UNMASK_RESPONSE")
        r = Reader(data[HEADER.size:])
        if r.u32() != self.epoch:
            raise ProtocolError(f"server ({self.stage}): UNMASK_RESPONSE from client {u} for another epoch")
        survivors = set(self.uploaded)
        expected = {v for v in self.accepted if u in self.holders(v)}
        entries = []
        for _ in range(r.u32()):
            kind, owner, raw = r.u8(), r.u32(), r.take(shamir.SHARE_BYTES)
            if owner not in expected or kind != (KIND_SELF if owner in survivors else KIND_KEY):
                raise ProtocolError(f"server ({self.stage}): client {u} revealed an unexpected share of "
                                    f"{party_name(owner)}")
            expected.discard(owner)
            i = 2 * self.epoch + kind
            commit = self._commits[(owner, u)][i * COMMIT_BYTES:(i + 1) * COMMIT_BYTES]
            if share_commitment(raw, session=self.cfg.digest, owner=owner, holder=u, epoch=self.epoch,
                                kind=kind) != commit:
                raise ProtocolError(f"server ({self.stage}): client {u}'s share of client {owner}'s "
                                    f"{_KIND_NAME[kind]} does not match client {owner}'s commitment (bad share "
                                    f"from client {u}); response rejected")
            entries.append((kind, owner, shamir.shares_from_bytes(raw, 1)[0]))
        r.done()
        if expected:
            raise ProtocolError(f"server ({self.stage}): client {u} withheld its shares of {sorted(expected)}")
        for kind, owner, share in entries:
            self._shares.setdefault((kind, owner), {})[u] = share
        self.responded.append(u)

    def _recover(self, kind: int, owner: int) -> bytes:
        got = self._shares.get((kind, owner), {})
        t = self.cfg.threshold
        if len(got) < t:
            raise SecAggAbortError(f"secure aggregation aborted at unmasking ({self.stage}): {len(got)} shares of "
                                   f"client {owner}'s {_KIND_NAME[kind]} arrived, fewer than the threshold t={t} "
                                   f"(too many dropouts)")
        holders = sorted(got)[:t]
        try:
            return bytes(shamir.combine(xs=[v + 1 for v in holders], shares=np.stack([got[v] for v in holders])
                                        [:, None, :])[0])
        except ValueError:
            return b""  # not a 16-byte secret: reported by the caller's commitment check

    def finish(self) -> dict[str, np.ndarray]:
        """sum_{u in U3} x_u per matrix (int64), after removing the masks; then the next epoch opens."""
        if self._stage != "unmask":
            raise ProtocolError(f"server ({self.stage}): finish out of stage")
        cfg, e, acc = self.cfg, self.epoch, self._acc
        survivors = sorted(self.uploaded)
        if len(survivors) < cfg.min_contributors:
            raise SecAggAbortError(f"secure aggregation aborted ({self.stage}): {len(survivors)} contributors, "
                                   f"fewer than the {cfg.min_contributors} every released sum needs")
        for u in survivors:
            seed = self._recover(KIND_SELF, u)
            if seed_commitment(seed, session=cfg.digest, owner=u, epoch=e) != self._seed_commit(u, e):
                raise ProtocolError(f"server ({self.stage}): client {u}'s shares do not rebuild the self-mask "
                                    f"seed it committed to (client {u} dealt inconsistent shares)")
            self.prg.sub(acc, self_mask_key(seed, session=cfg.digest, epoch=e))
        alive = set(survivors)
        for v in self.accepted:
            affected = sorted(self.graph[v] & alive)
            if v in alive or not affected:
                continue
            seed = self._recover(KIND_KEY, v)
            sk = mask_secret_key(seed, session=cfg.digest, epoch=e) if len(seed) == shamir.SECRET_BYTES else None
            if sk is None or public_bytes(sk) != self._mask_pk(v, e):
                raise ProtocolError(f"server ({self.stage}): client {v}'s shares do not rebuild the mask key it "
                                    f"advertised (client {v} dealt inconsistent shares)")
            for u in affected:
                key = pair_mask_key(sk, self._mask_pk(u, e), u=u, v=v, session=cfg.digest, epoch=e)
                (self.prg.sub if u < v else self.prg.add)(acc, key)  # u added sign(u, v) PRG(s_uv)
        acc &= acc.dtype.type(ring_mask(cfg.bits))
        top = len(survivors) * cfg.max_value
        out = {}
        for name, base, length in self._matrices:
            part = acc[base:base + length]
            if length and int(part.max()) > top:
                raise ProtocolError(f"server ({self.stage}): the sum of {name} reaches {int(part.max())} > "
                                    f"|U3| x max_value = {top}: a client sent out-of-range input or a wrong mask; "
                                    f"result refused")
            out[name] = part.astype(np.int64)
        self._acc = None
        if e + 1 < len(cfg.epochs):
            self._open_epoch(e + 1)
        else:
            self._stage = "done"
        return out
