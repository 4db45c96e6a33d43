"""Server side of the pairwise protocol (Bonawitz et al., CCS 2017, Fig. 4 / Sec. 4, active-adversary variant).

:class:`PairwiseServer` is a state machine over ``bytes`` messages.  It accepts a message only in its own
stage (a late ADVERTISE or a MASKED chunk after the upload closed is rejected and changes nothing), checks
every signature against the pinned key directory and every upload's MAC (a relabelled or forged upload is
rejected, naming the claimed sender), and checks every revealed share against its dealer's commitment (a bad
share is rejected, naming its holder).  Stages:

advertise -> rosters() -> share -> close_shares() -> per epoch e: upload(e) -> close_upload() ->
consistency(e) -> close_consistency() -> unmask(e) -> finish() -> upload(e + 1) ... -> done.

Uploads arrive chunk by chunk, in order; a client's checked chunks are kept packed (b bits per entry) and
added to the epoch's running sum, chunk by chunk, when its last chunk arrives, so a client whose stream
breaks counts as a dropout and its partial upload is discarded.  ``finish`` rebuilds the self-mask seeds of
the survivors U3 and the mask keys of the dropped clients U2 \\ U3 (checking each against its commitment or
advertised public key), removes the masks and refuses a sum outside [0, |U3| * max_value].
"""

from __future__ import annotations

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
    advertise_message,
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
from secprune.secagg.identity import KeyDirectory
from secprune.secagg.messages import HEADER, SERVER, Header, MsgType, Reader, decode, encode, party_name
from secprune.secagg.pairwise_client import CHUNK_HEAD, advert_size
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import packed_size, ring_dtype, ring_mask, unpack
from secprune.secagg.session import Layout, SessionConfig

__all__ = ["PairwiseServer"]

_KIND_NAME = {KIND_SELF: "self-mask seed", KIND_KEY: "mask key"}


class PairwiseServer:
    """The server's state machine for one session: routes shares, adds uploads, removes masks."""

    def __init__(self, *, directory: KeyDirectory, bits: int, max_value: int, threshold: int, degree: int | None,
                 graph_seed: int, epochs: Layout, cipher: str = "aes-ctr", aead: str = "aes-gcm",
                 chunk_entries: int = 1 << 22) -> None:
        self._sk = X25519PrivateKey.generate()
        self.cfg = SessionConfig(n_clients=directory.n_clients, bits=bits, max_value=max_value,
                                 threshold=threshold, degree=degree or 0, graph_seed=graph_seed,
                                 epochs=tuple(tuple(m) for m in epochs), server_key=public_bytes(self._sk),
                                 directory=directory.digest, nonce=os.urandom(16), cipher=cipher, aead=aead,
                                 chunk_entries=chunk_entries)
        self.cfg.validate(directory_digest=directory.digest)
        self.directory = directory
        self.graph = self.cfg.graph
        self.prg = MaskPRG(cipher=cipher)
        self._stage, self.epoch = "advertise", -1
        self._adverts: dict[int, bytes] = {}  # U1: advertisement bodies
        self._mac_keys: dict[int, bytes] = {}
        self._routes: dict[int, dict[int, bytes]] = {}  # U2: dealer -> holder -> SHARE message
        self._commits: dict[tuple[int, int], bytes] = {}  # (owner, holder) -> 2E share commitments
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
        header, _ = decode(message[:HEADER.size], expect=expect, round_id=self.cfg.session_id, receiver=SERVER)
        self._expect(stage, header)
        if header.sender not in allowed or header.sender in done:
            raise ProtocolError(f"server ({self.stage}): {expect.name} from {party_name(header.sender)}, {what}")
        return header

    def _abort_if_few(self, alive: Iterable[int], what: str) -> None:
        alive = list(alive)
        if len(alive) < self.cfg.threshold:
            raise SecAggAbortError(f"secure aggregation aborted at {what} ({self.stage}): {len(alive)} clients "
                                   f"left, fewer than the threshold t={self.cfg.threshold}")

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
        """U2: the clients whose share bundles arrived."""
        return sorted(self._routes)

    def holders(self, owner: int) -> list[int]:
        """Holders of ``owner``'s shares: itself and its neighbours in U2."""
        return sorted({owner} | (self.graph[owner] & set(self._routes)))

    # -- AdvertiseKeys -------------------------------------------------------------------------------------
    def session_messages(self) -> dict[int, bytes]:
        """SESSION to every client: the configuration it checks and signs into its advertisement."""
        body = self.cfg.encode()
        return {u: encode(MsgType.SESSION, round_id=self.cfg.session_id, sender=SERVER, receiver=u, payload=body)
                for u in range(self.cfg.n_clients)}

    def receive_advertisement(self, message: bytes) -> None:
        header = self._accept(message, MsgType.ADVERTISE, "advertise", range(self.cfg.n_clients), self._adverts,
                              "an unknown or repeated client")
        u = header.sender
        payload = message[HEADER.size:]
        if len(payload) != advert_size(len(self.cfg.epochs)):
            raise ProtocolError(f"server ({self.stage}): ADVERTISE from client {u}: {len(payload)} bytes, "
                                f"expected {advert_size(len(self.cfg.epochs))}")
        body, signature = payload[:-64], payload[-64:]
        if not self.directory.verify(u, advertise_message(body, session=self.cfg.digest, client=u), signature):
            raise ProtocolError(f"server ({self.stage}): ADVERTISE from client {u} is not signed by its pinned "
                                f"key; rejected")
        self._adverts[u] = payload
        self._mac_keys[u] = mac_key(self._sk, body[:32], client=u, session=self.cfg.digest)

    def _mask_pk(self, v: int, epoch: int) -> bytes:
        return self._adverts[v][32 + 32 * epoch: 64 + 32 * epoch]

    def _seed_commit(self, v: int, epoch: int) -> bytes:
        base = 32 + 32 * len(self.cfg.epochs)
        return self._adverts[v][base + 32 * epoch: base + 32 * (epoch + 1)]

    def rosters(self) -> dict[int, bytes]:
        """Close AdvertiseKeys: each advertiser gets its advertising neighbours' signed keys."""
        if self._stage != "advertise":
            raise ProtocolError(f"server ({self.stage}): rosters requested twice")
        self._abort_if_few(self._adverts, "key advertisement")
        out = {}
        for u in sorted(self._adverts):
            nbrs = sorted(v for v in self.graph[u] if v in self._adverts)
            body = b"".join(v.to_bytes(4, "big") + self._adverts[v] for v in nbrs)
            out[u] = encode(MsgType.ROSTER, round_id=self.cfg.session_id, sender=SERVER, receiver=u,
                            payload=len(nbrs).to_bytes(4, "big") + body)
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
            if len(blob) < HEADER.size + ncommit + 28:
                raise ProtocolError(f"server ({self.stage}): truncated share from client {u}")
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
        self._open_epoch(0)
        return out

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
        header = self._accept(message, MsgType.MASKED, "upload", self._routes, self.uploaded,
                              "which did not share keys or already uploaded")
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
        expected = {v for v in self._routes if u in self.holders(v)}
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
        for u in survivors:
            seed = self._recover(KIND_SELF, u)
            if seed_commitment(seed, session=cfg.digest, owner=u, epoch=e) != self._seed_commit(u, e):
                raise ProtocolError(f"server ({self.stage}): client {u}'s shares do not rebuild the self-mask "
                                    f"seed it committed to (client {u} dealt inconsistent shares)")
            self.prg.sub(acc, self_mask_key(seed, session=cfg.digest, epoch=e))
        alive = set(survivors)
        for v in self.sharers:
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
