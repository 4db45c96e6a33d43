"""Backend "pairwise": secure aggregation by double masking (Bonawitz et al., CCS 2017, Fig. 4 / Sec. 4)
with the sparse SecAgg+ neighbour graph as an option (Bell et al., CCS 2020).

One call of :meth:`PairwiseSum.sum` is one complete protocol instance ("round") over one layer's vectors,
with fresh keys and fresh masks (all derivations are bound to the 64-bit round id), so rounds are
independent and dropouts in one round reveal nothing about another.  The four message rounds are:

0. AdvertiseKeys: client u sends X25519 public keys c_u^PK (share encryption) and s_u^PK (masks).
   The server forwards to u the keys of its neighbours N(u) that advertised (U1).
1. ShareKeys: u draws 16-byte seeds b_u (self mask) and s_u (from which s_u^SK is derived by HKDF), splits
   both t-of-h with Shamir among the holders {u} + N(u) and sends each neighbour v its share encrypted with
   AES-GCM (or ChaCha20-Poly1305) under HKDF(X25519(c_u^SK, c_v^PK)), the message header (round, u, v) as
   associated data; the server only routes ciphertexts (U2 = clients whose shares arrived).
2. MaskedInputCollection: u uploads y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} sign(u, v) PRG(s_uv)
   (mod 2^b), with sign = +1 if u < v else -1, and s_uv = HKDF(X25519(s_u^SK, s_v^PK)), packed b bits per
   entry.  The server adds uploads as they arrive (U3 = uploaders).
3. Unmasking: the server asks the survivors for shares of b_u for u in U3 and of s_v for v in U2 minus U3
   (never both for one client); with t shares each it removes the self masks and the dropped clients'
   pairwise masks, leaving sum_{u in U3} x_u exactly.  Fewer than t shares: :class:`SecAggAbortError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from secprune.secagg import shamir
from secprune.secagg.base import SecureSum
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.graph import neighbour_graph
from secprune.secagg.messages import (
    HEADER,
    SERVER,
    Header,
    MsgType,
    Reader,
    ReplayGuard,
    decode,
    encode,
    party_name,
)
from secprune.secagg.prg import CIPHERS, MaskPRG, derive_key
from secprune.secagg.ring import pack, packed_size, ring_bits, ring_dtype, ring_mask, unpack

__all__ = ["AEADS", "STAGES", "RoundConfig", "PairwiseClient", "PairwiseServer", "PairwiseSum",
           "default_threshold"]

AEADS = ("aes-gcm", "chacha20-poly1305")
STAGES = ("advertise", "share", "upload", "unmask")  # a client dropping at a stage sends nothing from it on
SEED = 16  # bytes of b_u and of the seed of s_u^SK
_SHARE_PT = struct.Struct(">IIH")  # owner u, holder v, x; then b-share (16) and s-share (16)
_KIND_SELF, _KIND_KEY = 0, 1


def default_threshold(holders: int) -> int:
    """t = ceil(2h/3) of h share holders: tolerates h - t dropouts and satisfies t > h/2."""
    return max(1, math.ceil(2 * holders / 3))


@dataclass(frozen=True)
class RoundConfig:
    """Public parameters of one protocol instance."""

    round_id: int
    n_clients: int
    length: int
    bits: int
    max_value: int
    threshold: int
    cipher: str = "aes-ctr"
    aead: str = "aes-gcm"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise ValueError(f"bits: expected 1..64, got {self.bits}")
        if self.n_clients * self.max_value > ring_mask(self.bits):
            raise ValueError(f"bits: {self.bits} bits cannot hold a sum of {self.n_clients} entries "
                             f"<= {self.max_value}")
        if self.cipher not in CIPHERS:
            raise ValueError(f"cipher: expected one of {', '.join(CIPHERS)}, got {self.cipher!r}")
        if self.aead not in AEADS:
            raise ValueError(f"aead: expected one of {', '.join(AEADS)}, got {self.aead!r}")
        if self.threshold < 1:
            raise ValueError(f"threshold: expected >= 1, got {self.threshold}")

    @property
    def rid(self) -> bytes:
        return self.round_id.to_bytes(8, "big")


def _aead(name: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if name == "aes-gcm" else ChaCha20Poly1305(key)


def _mask_sk(seed: bytes, rid: bytes) -> X25519PrivateKey:
    """s_u^SK derived from its 16-byte seed (what is Shamir-shared)."""
    return X25519PrivateKey.from_private_bytes(derive_key(seed, info=b"secprune/secagg/mask-sk" + rid))


def _self_key(b_seed: bytes, rid: bytes) -> bytes:
    return derive_key(b_seed, info=b"secprune/secagg/self-mask" + rid)


def _pair_key(sk: X25519PrivateKey, pk: bytes, u: int, v: int, rid: bytes) -> bytes:
    lo, hi = min(u, v), max(u, v)
    shared = sk.exchange(X25519PublicKey.from_public_bytes(pk))
    return derive_key(shared, info=b"secprune/secagg/pairwise-mask" + rid + struct.pack(">II", lo, hi))


def _enc_key(sk: X25519PrivateKey, pk: bytes, u: int, v: int, rid: bytes) -> bytes:
    lo, hi = min(u, v), max(u, v)
    shared = sk.exchange(X25519PublicKey.from_public_bytes(pk))
    return derive_key(shared, info=b"secprune/secagg/share-enc" + rid + struct.pack(">II", lo, hi))


def _pub(sk: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _ids(payload: Reader) -> list[int]:
    return [payload.u32() for _ in range(payload.u32())]


def _check_vector(vector: np.ndarray, cfg: RoundConfig, who: str) -> None:
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.size != cfg.length:
        shape = getattr(vector, "shape", None)
        raise ValueError(f"{who}: expected a flat vector of {cfg.length} entries, got shape {shape}")
    if not (np.issubdtype(vector.dtype, np.integer) or vector.dtype == np.bool_):
        raise ValueError(f"{who}: expected an integer or bool vector, got dtype {vector.dtype}")
    if vector.size and (int(vector.min()) < 0 or int(vector.max()) > cfg.max_value):
        raise ValueError(f"{who}: entries must lie in [0, {cfg.max_value}]")


class PairwiseClient:
    """Client u's state machine for one round; every input and output is a ``bytes`` message."""

    def __init__(self, client_id: int, config: RoundConfig, *, prg: MaskPRG | None = None) -> None:
        if not 0 <= client_id < config.n_clients:
            raise ValueError(f"client_id: expected 0..{config.n_clients - 1}, got {client_id}")
        self.id = client_id
        self.cfg = config
        self.prg = prg or MaskPRG(cipher=config.cipher)
        self._c_sk = X25519PrivateKey.generate()
        self._s_seed = os.urandom(SEED)
        self._s_sk = _mask_sk(self._s_seed, config.rid)
        self._b_seed = os.urandom(SEED)
        self._guard = ReplayGuard()
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._shares: dict[int, tuple[int, bytes, bytes]] = {}  # owner -> (x, b-share, s-share)
        self._stage = "advertise"

    def _expect(self, stage: str) -> None:
        if self._stage != stage:
            raise ProtocolError(f"client {self.id}: got a {stage} step while in stage {self._stage}")

    def advertise(self) -> bytes:
        """Round 0: (c_u^PK, s_u^PK)."""
        self._expect("advertise")
        self._stage = "share"
        return encode(MsgType.ADVERTISE, round_id=self.cfg.round_id, sender=self.id, receiver=SERVER,
                      payload=_pub(self._c_sk) + _pub(self._s_sk))

    def share_keys(self, roster: bytes) -> bytes:
        """Round 1: read the neighbours' keys; return the bundle of encrypted shares for the server."""
        self._expect("share")
        header, payload = decode(roster, expect=MsgType.ROSTER, round_id=self.cfg.round_id, receiver=self.id)
        if header.sender != SERVER:
            raise ProtocolError(f"roster: expected from the server, got {party_name(header.sender)}")
        self._guard.check(header)
        r = Reader(payload)
        for _ in range(r.u32()):
            v, c_pk, s_pk = r.u32(), r.take(32), r.take(32)
            if v == self.id or v >= self.cfg.n_clients or v in self._roster:
                raise ProtocolError(f"roster: invalid neighbour id {v}")
            self._roster[v] = (c_pk, s_pk)
        r.done()
        self._guard.mark(header)
        holders = sorted([self.id, *self._roster])
        if len(holders) < self.cfg.threshold:
            raise SecAggAbortError(f"client {self.id}: only {len(holders)} share holders, fewer than the "
                                   f"threshold t={self.cfg.threshold}; round aborted")
        b_sh = shamir.split(self._b_seed, threshold=self.cfg.threshold, n_shares=len(holders))
        s_sh = shamir.split(self._s_seed, threshold=self.cfg.threshold, n_shares=len(holders))
        blobs = []
        for (x, b_share), (_, s_share), v in zip(b_sh, s_sh, holders, strict=True):
            if v == self.id:
                self._shares[v] = (x, b_share, s_share)
                continue
            head = Header(MsgType.SHARE, self.cfg.round_id, self.id, v).pack()
            key = _enc_key(self._c_sk, self._roster[v][0], self.id, v, self.cfg.rid)
            nonce = os.urandom(12)
            pt = _SHARE_PT.pack(self.id, v, x) + b_share + s_share
            blob = head + nonce + _aead(self.cfg.aead, key).encrypt(nonce, pt, head)
            blobs.append(len(blob).to_bytes(4, "big") + blob)
        self._stage = "receive"
        return encode(MsgType.SHARE_BUNDLE, round_id=self.cfg.round_id, sender=self.id, receiver=SERVER,
                      payload=len(blobs).to_bytes(4, "big") + b"".join(blobs))

    def receive_share(self, message: bytes) -> None:
        """Round 1 (receiving side): authenticate, decrypt and keep a neighbour's share."""
        if self._stage != "receive":
            raise ProtocolError(f"client {self.id}: share received in stage {self._stage}")
        header, payload = decode(message, expect=MsgType.SHARE, round_id=self.cfg.round_id, receiver=self.id)
        u = header.sender
        if u not in self._roster:
            raise ProtocolError(f"share: sender {party_name(u)} is not a neighbour of client {self.id}")
        self._guard.check(header)
        if len(payload) < 12:
            raise ProtocolError("share: truncated ciphertext")
        key = _enc_key(self._c_sk, self._roster[u][0], self.id, u, self.cfg.rid)
        try:
            pt = _aead(self.cfg.aead, key).decrypt(payload[:12], payload[12:], message[:HEADER.size])
        except InvalidTag:
            raise ProtocolError(f"share from client {u}: authentication failed (tampered, replayed into "
                                f"another round, or misaddressed)") from None
        if len(pt) != _SHARE_PT.size + 2 * SEED:
            raise ProtocolError("share: bad plaintext length")
        owner, holder, x = _SHARE_PT.unpack_from(pt)
        if owner != u or holder != self.id or x < 1:
            raise ProtocolError("share: ids inside the ciphertext do not match the header")
        self._shares[u] = (x, pt[_SHARE_PT.size:_SHARE_PT.size + SEED], pt[_SHARE_PT.size + SEED:])
        self._guard.mark(header)

    def masked_input(self, vector: np.ndarray) -> bytes:
        """Round 2: y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv) mod 2^b, packed in b bits per entry."""
        if self._stage != "receive":
            raise ProtocolError(f"client {self.id}: masked input requested in stage {self._stage}")
        _check_vector(vector, self.cfg, f"client {self.id}")
        cfg = self.cfg
        y = vector.astype(ring_dtype(cfg.bits))  # a fresh copy: the caller's vector is left alone
        self.prg.add(y, _self_key(self._b_seed, cfg.rid))
        for v in sorted(self._shares):  # neighbours whose shares arrived = N(u) & U2
            if v == self.id:
                continue
            key = _pair_key(self._s_sk, self._roster[v][1], self.id, v, cfg.rid)
            (self.prg.add if self.id < v else self.prg.sub)(y, key)
        y &= y.dtype.type(ring_mask(cfg.bits))
        self._stage = "unmask"
        head = bytes([cfg.bits]) + cfg.length.to_bytes(8, "big")
        return encode(MsgType.MASKED, round_id=cfg.round_id, sender=self.id, receiver=SERVER,
                      payload=head + pack(y, cfg.bits))

    def unmask(self, request: bytes) -> bytes:
        """Round 3: shares of b_u for surviving u, of s_v for dropped v (never both for one client)."""
        self._expect("unmask")
        header, payload = decode(request, expect=MsgType.UNMASK_REQUEST, round_id=self.cfg.round_id,
                                 receiver=self.id)
        if header.sender != SERVER:
            raise ProtocolError(f"unmask request: expected from the server, got {party_name(header.sender)}")
        self._guard.check(header)
        r = Reader(payload)
        dropped, survivors = set(_ids(r)), set(_ids(r))
        r.done()
        if dropped & survivors:
            raise ProtocolError("unmask request: a client is listed both as dropped and as surviving")
        if self.id not in survivors or len(survivors) < self.cfg.threshold:
            raise SecAggAbortError(f"client {self.id}: unmask request lists {len(survivors)} survivors, "
                                   f"fewer than t={self.cfg.threshold} or without this client; round aborted")
        self._guard.mark(header)
        self._stage = "done"
        out = []
        for owner in sorted(self._shares):
            x, b_share, s_share = self._shares[owner]
            if owner in survivors:
                out.append(struct.pack(">BIH", _KIND_SELF, owner, x) + b_share)
            elif owner in dropped:
                out.append(struct.pack(">BIH", _KIND_KEY, owner, x) + s_share)
        return encode(MsgType.UNMASK_RESPONSE, round_id=self.cfg.round_id, sender=self.id, receiver=SERVER,
                      payload=len(out).to_bytes(4, "big") + b"".join(out))


class PairwiseServer:
    """The server's state machine for one round: routes shares, adds uploads, removes masks."""

    def __init__(self, config: RoundConfig, graph: list[frozenset[int]], *,
                 prg: MaskPRG | None = None) -> None:
        if len(graph) != config.n_clients:
            raise ValueError(f"graph: expected {config.n_clients} neighbour sets, got {len(graph)}")
        self.cfg = config
        self.graph = graph
        self.prg = prg or MaskPRG(cipher=config.cipher)
        self._guard = ReplayGuard()
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # U1
        self._bundles: dict[int, list[tuple[int, bytes]]] = {}  # U2
        self.uploaded: list[int] = []  # U3
        self._acc = np.zeros(config.length, ring_dtype(config.bits))
        self._dropped: list[int] = []
        self._shares: dict[tuple[int, int], dict[int, bytes]] = {}  # (kind, owner) -> {x: share}
        self.responded: list[int] = []  # U4

    @property
    def sharers(self) -> list[int]:
        """U2: the clients whose share bundles arrived."""
        return sorted(self._bundles)

    def _abort_if_few(self, alive: Iterable[int], stage: str) -> None:
        alive = list(alive)
        if len(alive) < self.cfg.threshold:
            raise SecAggAbortError(f"secure aggregation aborted at {stage}: {len(alive)} clients left, "
                                   f"fewer than the threshold t={self.cfg.threshold}")

    def receive_advertisement(self, message: bytes) -> None:
        header, payload = decode(message, expect=MsgType.ADVERTISE, round_id=self.cfg.round_id,
                                 receiver=SERVER)
        if header.sender >= self.cfg.n_clients:
            raise ProtocolError(f"advertisement: unknown client id {header.sender}")
        self._guard.check(header)
        if len(payload) != 64:
            raise ProtocolError(f"advertisement: expected 64 key bytes, got {len(payload)}")
        self.keys[header.sender] = (payload[:32], payload[32:])
        self._guard.mark(header)

    def rosters(self) -> dict[int, bytes]:
        """Each advertiser gets the keys of its advertising neighbours."""
        self._abort_if_few(self.keys, "key advertisement")
        out = {}
        for u in sorted(self.keys):
            nbrs = sorted(v for v in self.graph[u] if v in self.keys)
            body = b"".join(v.to_bytes(4, "big") + self.keys[v][0] + self.keys[v][1] for v in nbrs)
            out[u] = encode(MsgType.ROSTER, round_id=self.cfg.round_id, sender=SERVER, receiver=u,
                            payload=len(nbrs).to_bytes(4, "big") + body)
        return out

    def receive_share_bundle(self, message: bytes) -> None:
        header, payload = decode(message, expect=MsgType.SHARE_BUNDLE, round_id=self.cfg.round_id,
                                 receiver=SERVER)
        u = header.sender
        if u not in self.keys:
            raise ProtocolError(f"share bundle: {party_name(u)} did not advertise keys")
        self._guard.check(header)
        r = Reader(payload)
        routed = []
        for _ in range(r.u32()):
            blob = r.take(r.u32())
            h, _ = decode(blob, expect=MsgType.SHARE, round_id=self.cfg.round_id)
            if h.sender != u or h.receiver not in self.graph[u] or h.receiver not in self.keys:
                raise ProtocolError(f"share bundle from client {u}: share addressed from {h.sender} to "
                                    f"{h.receiver}, not to one of its neighbours")
            routed.append((h.receiver, blob))
        r.done()
        self._bundles[u] = routed
        self._guard.mark(header)

    def close_shares(self) -> dict[int, list[bytes]]:
        """Route the encrypted shares to the clients of U2 (a forwarded SHARE message is unchanged)."""
        self._abort_if_few(self._bundles, "key sharing")
        out: dict[int, list[bytes]] = {u: [] for u in sorted(self._bundles)}
        for blobs in self._bundles.values():
            for v, blob in blobs:
                if v in out:
                    out[v].append(blob)
        return out

    def receive_masked(self, message: bytes) -> None:
        """Add one masked upload to the running sum (streaming: uploads are not kept)."""
        header, payload = decode(message, expect=MsgType.MASKED, round_id=self.cfg.round_id, receiver=SERVER)
        u = header.sender
        if u not in self._bundles:
            raise ProtocolError(f"masked input: {party_name(u)} did not share keys this round")
        self._guard.check(header)
        r = Reader(payload)
        bits, n = r.u8(), r.u64()
        if bits != self.cfg.bits or n != self.cfg.length:
            raise ProtocolError(f"masked input from client {u}: expected {self.cfg.length} entries of "
                                f"{self.cfg.bits} bits, got {n} of {bits}")
        data = r.take(packed_size(n, bits))
        r.done()
        np.add(self._acc, unpack(data, bits, n), out=self._acc)
        self._guard.mark(header)
        self.uploaded.append(u)

    def close_masked(self) -> dict[int, bytes]:
        """Unmask requests to U3, naming U2 \\ U3 as dropped and U3 as surviving."""
        self._abort_if_few(self.uploaded, "masked input collection")
        self._dropped = sorted(set(self._bundles) - set(self.uploaded))
        survivors = sorted(self.uploaded)
        body = (len(self._dropped).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in self._dropped)
                + len(survivors).to_bytes(4, "big") + b"".join(u.to_bytes(4, "big") for u in survivors))
        return {u: encode(MsgType.UNMASK_REQUEST, round_id=self.cfg.round_id, sender=SERVER, receiver=u,
                          payload=body) for u in survivors}

    def receive_unmask_response(self, message: bytes) -> None:
        header, payload = decode(message, expect=MsgType.UNMASK_RESPONSE, round_id=self.cfg.round_id,
                                 receiver=SERVER)
        if header.sender not in self.uploaded:
            raise ProtocolError(f"unmask response: {party_name(header.sender)} was not asked")
        self._guard.check(header)
        r = Reader(payload)
        entries = []
        for _ in range(r.u32()):
            kind, owner, x, share = r.u8(), r.u32(), r.u16(), r.take(SEED)
            expected = _KIND_SELF if owner in self.uploaded else _KIND_KEY if owner in self._dropped else None
            if kind != expected:
                raise ProtocolError(f"unmask response from client {header.sender}: unexpected share of "
                                    f"client {owner}")
            entries.append((kind, owner, x, share))
        r.done()
        for kind, owner, x, share in entries:
            self._shares.setdefault((kind, owner), {})[x] = share
        self._guard.mark(header)
        self.responded.append(header.sender)

    def _recover(self, kind: int, owner: int) -> bytes:
        got = self._shares.get((kind, owner), {})
        t = self.cfg.threshold
        if len(got) < t:
            what = "self-mask seed" if kind == _KIND_SELF else "mask key"
            raise SecAggAbortError(f"secure aggregation aborted at unmasking: {len(got)} shares of client "
                                   f"{owner}'s {what} arrived, fewer than the threshold t={t} "
                                   f"(too many dropouts)")
        return shamir.combine(sorted(got.items())[:t])

    def finish(self) -> np.ndarray:
        """sum_{u in U3} x_u as int64, after removing self masks and the dropped clients' pairwise masks."""
        cfg = self.cfg
        acc = self._acc
        for u in sorted(self.uploaded):
            self.prg.sub(acc, _self_key(self._recover(_KIND_SELF, u), cfg.rid))
        uploaded = set(self.uploaded)
        for v in self._dropped:
            sk = _mask_sk(self._recover(_KIND_KEY, v), cfg.rid)
            if _pub(sk) != self.keys[v][1]:
                raise ProtocolError(f"unmasking: the reconstructed mask key of client {v} does not match its "
                                    f"advertised public key (bad shares)")
            for u in sorted(self.graph[v] & uploaded):
                key = _pair_key(sk, self.keys[u][1], u, v, cfg.rid)
                (self.prg.sub if u < v else self.prg.add)(acc, key)  # u added sign(u, v) PRG(s_uv)
        acc &= acc.dtype.type(ring_mask(cfg.bits))
        return acc.astype(np.int64)


DropoutSpec = Mapping[str, Iterable[int]] | Callable[[str], Mapping[str, Iterable[int]] | None] | None


class PairwiseSum(SecureSum):
    """Simulated SecAgg / SecAgg+ among ``n_clients`` clients and a server, all messages as bytes.

    Options: ``neighbours`` (None: complete graph = SecAgg; int k or ``"log"``: k-regular SecAgg+ graph),
    ``threshold`` t (default :func:`default_threshold` of the smallest holder set {u} + N(u); must satisfy
    h/2 < t <= h), ``bits`` (ring width, default ``ring_bits``; wider for other integer data), ``cipher``
    (``"aes-ctr"``/``"chacha20"``), ``aead`` (``"aes-gcm"``/``"chacha20-poly1305"``) and ``dropouts``: a
    mapping stage -> client ids (stages ``advertise``, ``share``, ``upload``, ``unmask``; a client listed
    under a stage sends nothing from that stage on), or a callable ``key -> mapping`` for per-round
    schedules.  With dropouts the result is the exact sum over the clients whose masked input arrived
    (``last_survivors``); a client dropping at ``unmask`` (after its upload) is included.
    """

    name = "pairwise"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0,
                 neighbours: int | str | None = None, threshold: int | None = None, bits: int | None = None,
                 cipher: str = "aes-ctr",
                 aead: str = "aes-gcm", dropouts: DropoutSpec = None) -> None:
        super().__init__(n_clients=n_clients, max_value=max_value)
        if not isinstance(max_value, (int, np.integer)) or max_value < 1:
            raise ValueError(f"max_value: expected an int >= 1, got {max_value!r}")
        need = ring_bits(n_clients=n_clients, max_value=max_value)
        self.bits = need if bits is None else int(bits)
        if not need <= self.bits <= 64:
            raise ValueError(f"bits: expected {need}..64 for {n_clients} clients with entries "
                             f"<= {max_value}, got {bits}")
        self.seed = seed
        self.neighbours = neighbours
        self._graph0 = neighbour_graph(n_clients, degree=neighbours, seed=seed)  # validates ``neighbours``
        holders = 1 + min(len(a) for a in self._graph0)
        self.threshold = default_threshold(holders) if threshold is None else int(threshold)
        if not holders / 2 < self.threshold <= holders:
            raise ValueError(f"threshold: expected {holders}/2 < t <= {holders} (share holders per client), "
                             f"got {threshold}")
        if cipher not in CIPHERS:
            raise ValueError(f"cipher: expected one of {', '.join(CIPHERS)}, got {cipher!r}")
        if aead not in AEADS:
            raise ValueError(f"aead: expected one of {', '.join(AEADS)}, got {aead!r}")
        self.cipher, self.aead = cipher, aead
        self.dropouts = dropouts
        self._session = os.urandom(8)
        self._counter = 0
        self._prg = MaskPRG(cipher=cipher)
        self.last_survivors: list[int] = []

    def _schedule(self, key: str) -> dict[str, set[int]]:
        spec = self.dropouts(key) if callable(self.dropouts) else self.dropouts
        out = {s: set() for s in STAGES}
        for stage, ids in (spec or {}).items():
            if stage not in STAGES:
                raise ValueError(f"dropouts: unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
            for i in ids:
                if not 0 <= int(i) < self.n_clients:
                    raise ValueError(f"dropouts: client id {i} outside 0..{self.n_clients - 1}")
                out[stage].add(int(i))
        return out

    def _send(self, sender: int, receiver: int, message: bytes) -> bytes:
        self.log.add(sender=party_name(sender), receiver=party_name(receiver), nbytes=len(message))
        return message

    def _sum(self, key: str, vectors: list[np.ndarray]) -> np.ndarray:
        self._counter += 1
        digest = hashlib.sha256(self._session + self._counter.to_bytes(8, "big") + key.encode()).digest()
        cfg = RoundConfig(round_id=int.from_bytes(digest[:8], "big"), n_clients=self.n_clients,
                          length=vectors[0].size, bits=self.bits, max_value=int(self.max_value),
                          threshold=self.threshold, cipher=self.cipher, aead=self.aead)
        graph = neighbour_graph(self.n_clients, degree=self.neighbours,
                                seed=int.from_bytes(digest[8:16], "big") ^ self.seed)
        drop = self._schedule(key)
        gone: set[int] = set()
        clients = {i: PairwiseClient(i, cfg, prg=self._prg) for i in range(self.n_clients)}
        server = PairwiseServer(cfg, graph, prg=self._prg)

        gone |= drop["advertise"]
        for i in sorted(set(clients) - gone):
            server.receive_advertisement(self._send(i, SERVER, clients[i].advertise()))
        rosters = {i: self._send(SERVER, i, m) for i, m in server.rosters().items()}
        gone |= drop["share"]
        for i in sorted(set(rosters) - gone):
            server.receive_share_bundle(self._send(i, SERVER, clients[i].share_keys(rosters[i])))
        for i, blobs in server.close_shares().items():
            for blob in blobs:
                clients[i].receive_share(self._send(SERVER, i, blob))
        gone |= drop["upload"]
        for i in sorted(set(server.sharers) - gone):
            server.receive_masked(self._send(i, SERVER, clients[i].masked_input(vectors[i])))
        requests = server.close_masked()
        gone |= drop["unmask"]
        for i in sorted(set(requests) - gone):
            request = self._send(SERVER, i, requests[i])
            server.receive_unmask_response(self._send(i, SERVER, clients[i].unmask(request)))
        result = server.finish()
        self.last_survivors = sorted(server.uploaded)
        return result
