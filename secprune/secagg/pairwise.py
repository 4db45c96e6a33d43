"""Backend "pairwise": secure aggregation by double masking against an active server (Bonawitz et al., CCS
2017, Sec. 4 and Fig. 4, with the consistency check and signatures of the active-adversary variant), with the
sparse SecAgg+ neighbour graph as an option (Bell et al., CCS 2020).

:class:`PairwiseSum` simulates the clients (:class:`~secprune.secagg.pairwise_client.PairwiseClient`) and the
server (:class:`~secprune.secagg.pairwise_server.PairwiseServer`) in one process; it only routes ``bytes``
between them and counts them.  One session (one key agreement) covers every matrix passed to
:meth:`~secprune.secagg.base.SecureSum.sum_many` or every epoch of
:meth:`~secprune.secagg.base.SecureSum.open_session`; :meth:`~secprune.secagg.base.SecureSum.sum` is a
session of one matrix.  See docs/secagg.md for the protocol, the threat model and the safe parameters.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from secprune.secagg.base import SecureSum, Session, VectorSource
from secprune.secagg.crypto import AEADS
from secprune.secagg.identity import IdentityKey, KeyDirectory, load_identities
from secprune.secagg.messages import SERVER, party_name
from secprune.secagg.pairwise_client import PairwiseClient
from secprune.secagg.pairwise_server import PairwiseServer
from secprune.secagg.params import default_threshold, pairwise_parameters
from secprune.secagg.prg import CIPHERS
from secprune.secagg.ring import ring_bits
from secprune.secagg.session import MAX_CHUNK

__all__ = ["AEADS", "STAGES", "PairwiseClient", "PairwiseServer", "PairwiseSum", "default_threshold", "run_setup"]

STAGES = ("advertise", "share", "upload", "consistency", "unmask")  # a client dropping at a stage sends
# nothing from it on (for the rest of the session)
DropoutSpec = Mapping[str, Iterable[int]] | Callable[[str], Mapping[str, Iterable[int]] | None] | None


def _deliver(_sender: int, _receiver: int, message: bytes) -> bytes:
    return message


def run_setup(server: PairwiseServer, clients: Mapping[int, PairwiseClient] | list[PairwiseClient], *,
              send: Callable[[int, int, bytes], bytes] = _deliver, skip_advertise: Iterable[int] = (),
              skip_share: Iterable[int] = ()) -> None:
    """Route a session's setup in-process (AdvertiseKeys, ShareKeys, share delivery): every message goes
    through ``send(sender, receiver, message)``; clients in ``skip_*`` send nothing from that stage on."""
    skip_advertise, skip_share = set(skip_advertise), set(skip_share) | set(skip_advertise)
    for i, msg in server.session_messages().items():
        if i not in skip_advertise:
            server.receive_advertisement(send(i, SERVER, clients[i].join(send(SERVER, i, msg))))
    rosters = server.rosters()
    for i in sorted(set(rosters) - skip_share):
        server.receive_share_bundle(send(i, SERVER, clients[i].share_keys(send(SERVER, i, rosters[i]))))
    for i, blobs in server.close_shares().items():
        for blob in blobs:
            clients[i].receive_share(send(SERVER, i, blob))


class PairwiseSession(Session):
    """One session: runs the setup on construction, then ``sum_epoch`` for each epoch in order."""

    def __init__(self, summer: PairwiseSum, key: str, epochs: list[tuple[str, dict[str, int]]]) -> None:
        super().__init__(summer, key, epochs)
        s = summer
        digest = hashlib.sha256(s._nonce + s._counter.to_bytes(8, "big") + key.encode()).digest()
        s._counter += 1
        self.server = PairwiseServer(directory=s.directory, bits=s.bits, max_value=int(s.max_value),
                                     threshold=s.threshold, degree=s.degree,
                                     graph_seed=int.from_bytes(digest[:8], "big") ^ s.seed,
                                     epochs=[tuple(lengths.items()) for _, lengths in epochs], cipher=s.cipher,
                                     aead=s.aead, chunk_entries=s.chunk_entries)
        self.clients = {i: PairwiseClient(i, identity=s._identities[i], directory=s.directory)
                        for i in range(s.n_clients)}
        self.gone: set[int] = set()
        self._setup(s._schedule(key))

    def _send(self, sender: int, receiver: int, message: bytes) -> bytes:
        self.summer.log.add(sender=party_name(sender), receiver=party_name(receiver), nbytes=len(message))
        return message

    def _setup(self, drop: dict[str, set[int]]) -> None:
        self.gone |= drop["advertise"] | drop["share"]
        run_setup(self.server, self.clients, send=self._send, skip_advertise=drop["advertise"],
                  skip_share=self.gone)

    def sum_epoch(self, epoch: int, vector: VectorSource) -> dict[str, np.ndarray]:
        self._start(epoch)
        server, clients, send = self.server, self.clients, self._send
        drop = self.summer._schedule(self.epochs[epoch][0])
        self.gone |= drop["upload"]
        for i in server.sharers:
            if i in self.gone:
                continue
            for msg in clients[i].upload(epoch, lambda name, i=i: vector(i, name)):
                server.receive_masked(send(i, SERVER, msg))
            clients[i].prg.release()
        requests = server.close_upload()
        self.gone |= drop["consistency"]
        for i in sorted(set(requests) - self.gone):
            server.receive_survivors_signature(send(i, SERVER, clients[i].sign_survivors(send(SERVER, i, requests[i]))))
        requests = server.close_consistency()
        self.gone |= drop["unmask"]
        for i in sorted(set(requests) - self.gone):
            server.receive_unmask_response(send(i, SERVER, clients[i].unmask(send(SERVER, i, requests[i]))))
        self.summer.last_survivors = sorted(server.uploaded)
        out = server.finish()
        server.prg.release()
        return out


class PairwiseSum(SecureSum):
    """Simulated SecAgg / SecAgg+ against an active server among ``n_clients`` clients, all messages as bytes.

    Options: ``neighbours`` (None or 0: complete graph = SecAgg; an even k >= 4 or ``"log"``: k-regular SecAgg+
    graph; k >= n - 1 means the complete graph), ``threshold`` t (default ceil(2h/3) of the h share holders,
    refused below the safe level of :func:`~secprune.secagg.params.min_threshold`), ``bits`` (ring width,
    default ``ring_bits``), ``cipher`` (``"aes-ctr"``/``"chacha20"``), ``aead``
    (``"aes-gcm"``/``"chacha20-poly1305"``), ``chunk_entries`` (entries per upload message, default 2^22),
    ``key_dir`` (a folder from :func:`~secprune.secagg.identity.generate_identities` with every client's
    long-term key and the pinned directory; default: fresh keys in memory) and ``dropouts``: a mapping stage
    -> client ids (stages ``advertise``, ``share``, ``upload``, ``consistency``, ``unmask``; a client listed
    under a stage sends nothing from that stage on), or a callable ``key -> mapping`` evaluated with the
    session key for the setup stages and with each epoch's key for the others.  With dropouts the result is
    the exact sum over the clients whose masked input arrived (``last_survivors``).
    """

    name = "pairwise"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0,
                 neighbours: int | str | None = None, threshold: int | None = None, bits: int | None = None,
                 cipher: str = "aes-ctr", aead: str = "aes-gcm", chunk_entries: int = 1 << 22,
                 key_dir: str | Path | None = None, dropouts: DropoutSpec = None) -> None:
        super().__init__(n_clients=n_clients, max_value=max_value)
        if not isinstance(max_value, (int, np.integer)) or max_value < 1:
            raise ValueError(f"max_value: expected an int >= 1, got {max_value!r}")
        need = ring_bits(n_clients=n_clients, max_value=max_value)
        self.bits = need if bits is None else int(bits)
        if not need <= self.bits <= 64:
            raise ValueError(f"bits: expected {need}..64 for {n_clients} clients with entries "
                             f"<= {max_value}, got {bits}")
        self.degree, self.threshold = pairwise_parameters(n_clients=n_clients, neighbours=neighbours,
                                                          threshold=threshold, flag_prefix="")
        if cipher not in CIPHERS:
            raise ValueError(f"cipher: expected one of {', '.join(CIPHERS)}, got {cipher!r}")
        if aead not in AEADS:
            raise ValueError(f"aead: expected one of {', '.join(AEADS)}, got {aead!r}")
        if not 64 <= chunk_entries <= MAX_CHUNK:
            raise ValueError(f"chunk_entries: expected 64..{MAX_CHUNK}, got {chunk_entries}")
        self.neighbours, self.seed = neighbours, seed
        self.cipher, self.aead, self.chunk_entries = cipher, aead, int(chunk_entries)
        self.dropouts = dropouts
        if key_dir is not None:
            self.directory, self._identities = load_identities(key_dir)
            if self.directory.n_clients != n_clients or set(range(n_clients)) - set(self._identities):
                raise ValueError(f"key_dir: {key_dir} must hold the directory and keys of {n_clients} clients")
        else:
            self._identities = {i: IdentityKey.generate() for i in range(n_clients)}
            self.directory = KeyDirectory({i: k.public for i, k in self._identities.items()})
        self._nonce = os.urandom(8)
        self._counter = 0
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

    def _session(self, key: str, epochs: list[tuple[str, dict[str, int]]]) -> PairwiseSession:
        if not callable(self.dropouts):
            self._schedule(key)  # validate a static schedule before anything is sent
        return PairwiseSession(self, key, epochs)
