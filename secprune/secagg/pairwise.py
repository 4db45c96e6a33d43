"""Backend "pairwise": secure aggregation by double masking against an active server (Bonawitz et al., CCS
2017, Sec. 4 and Fig. 4, with the consistency check and signatures of the active-adversary variant), with the
sparse SecAgg+ neighbour graph when the threat allows one (Bell et al., CCS 2020).

:class:`PairwiseSum` simulates the clients (:class:`~secprune.secagg.pairwise_client.PairwiseClient`) and the
server (:class:`~secprune.secagg.pairwise_server.PairwiseServer`) in one process; it only routes ``bytes``
between them and counts them.  One session (one key agreement) covers every matrix passed to
:meth:`~secprune.secagg.base.SecureSum.sum_many` or every epoch of
:meth:`~secprune.secagg.base.SecureSum.open_session`; :meth:`~secprune.secagg.base.SecureSum.sum` is a
session of one matrix.  Each client keeps one ledger across the summer's sessions (an input is released into
one sum at most), and a client excluded as a cheater is not invited to later sessions.  See docs/secagg.md for
the protocol, the threat model and the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from secprune.secagg import params
from secprune.secagg.base import SecureSum, Session, VectorSource
from secprune.secagg.crypto import AEADS
from secprune.secagg.identity import IdentityKey, KeyDirectory, load_identities
from secprune.secagg.ledger import Ledger
from secprune.secagg.messages import SERVER, party_name
from secprune.secagg.pairwise_client import PairwiseClient
from secprune.secagg.pairwise_server import PairwiseServer
from secprune.secagg.params import Threat, pairwise_parameters
from secprune.secagg.prg import CIPHERS
from secprune.secagg.ring import ring_bits
from secprune.secagg.session import MAX_CHUNK

__all__ = ["AEADS", "STAGES", "PairwiseClient", "PairwiseServer", "PairwiseSum", "run_setup"]

STAGES = ("advertise", "share", "upload", "consistency", "unmask")  # a client dropping at a stage sends
# nothing from it on (for the rest of the session)
DropoutSpec = Mapping[str, Iterable[int]] | Callable[[str], Mapping[str, Iterable[int]] | None] | None
Send = Callable[[int, int, bytes], bytes]


def _deliver(_sender: int, _receiver: int, message: bytes) -> bytes:
    return message


def run_setup(server: PairwiseServer, clients: Mapping[int, PairwiseClient] | list[PairwiseClient], *,
              send: Send = _deliver, skip_advertise: Iterable[int] = (), skip_share: Iterable[int] = ()) -> None:
    """Route a session's setup in-process (AdvertiseKeys, the graph draw, ShareKeys, share delivery, complaints,
    CONFIRM): every message goes through ``send(sender, receiver, message)``; clients in ``skip_*`` send
    nothing from that stage on."""
    skip_advertise, skip_share = set(skip_advertise), set(skip_share) | set(skip_advertise)
    for i, msg in server.session_messages().items():
        if i not in skip_advertise:
            server.receive_advertisement(send(i, SERVER, clients[i].join(send(SERVER, i, msg))))
    if server.cfg.degree:
        for i, msg in server.commits().items():
            server.receive_reveal(send(i, SERVER, clients[i].reveal(send(SERVER, i, msg))))
    rosters = server.rosters()
    for i in sorted(set(rosters) - skip_share):
        server.receive_share_bundle(send(i, SERVER, clients[i].share_keys(send(SERVER, i, rosters[i]))))
    routed = server.close_shares()
    for i, blobs in routed.items():
        for blob in blobs:
            clients[i].receive_share(send(SERVER, i, blob))
        server.receive_ack(send(i, SERVER, clients[i].acknowledge()))
    confirms = server.close_acks()
    if server._stage == "open":  # complaints: the accused dealers open the shares in question
        for v, msg in confirms.items():
            server.receive_open(send(v, SERVER, clients[v].open_shares(send(SERVER, v, msg))))
        confirms = server.close_open()
    for i, msg in confirms.items():
        if i in server.accepted:
            clients[i].confirm(send(SERVER, i, msg))


class PairwiseSession(Session):
    """One session: runs the setup on construction, then ``sum_epoch`` for each epoch in order."""

    def __init__(self, summer: PairwiseSum, key: str, epochs: list[tuple[str, dict[str, int]]]) -> None:
        super().__init__(summer, key, epochs)
        s = summer
        self.server = PairwiseServer(directory=s.directory, bits=s.bits, max_value=int(s.max_value),
                                     threshold=s.threshold, degree=s.degree, min_contributors=s.threat.min_contributors,
                                     epochs=[tuple(lengths.items()) for _, lengths in epochs], threat=s.threat,
                                     cipher=s.cipher, aead=s.aead, chunk_entries=s.chunk_entries,
                                     excluded=s.excluded)
        self.clients = {i: s.client_class(i, identity=s._identities[i], directory=s.directory, threat=s.threat,
                                          ledger=s.ledgers[i]) for i in range(s.n_clients) if i not in s.excluded}
        self.gone: set[int] = set(s.excluded)
        try:
            self._setup(s._schedule(key))
        finally:
            s.excluded.update(self.server.excluded)

    def _send(self, sender: int, receiver: int, message: bytes) -> bytes:
        self.summer.log.add(sender=party_name(sender), receiver=party_name(receiver), nbytes=len(message))
        return message

    def _setup(self, drop: dict[str, set[int]]) -> None:
        self.gone |= drop["advertise"] | drop["share"]
        run_setup(self.server, self.clients, send=self._send, skip_advertise=drop["advertise"],
                  skip_share=self.gone)
        self.gone |= set(self.server.excluded)

    def sum_epoch(self, epoch: int, vector: VectorSource) -> dict[str, np.ndarray]:
        self._start(epoch)
        server, clients, send = self.server, self.clients, self._send
        drop = self.summer._schedule(self.epochs[epoch][0])
        self.gone |= drop["upload"]
        for i in server.accepted:
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

    Threat (:mod:`secprune.secagg.params`): ``colluders`` and ``dropout_budget`` (counts, or fractions of the
    clients such as ``"1/3"``; defaults 1/3 and 1/10) and ``min_contributors`` (default colluders + 3), from
    which the degree and threshold are derived; ``neighbours`` (0 or None: derived; an even k >= 4: that
    SecAgg+ degree; k >= n - 1: the complete graph) and ``threshold`` are checked against it.  Other options:
    ``bits`` (ring width, default ``ring_bits``), ``cipher`` (``"aes-ctr"``/``"chacha20"``), ``aead``
    (``"aes-gcm"``/``"chacha20-poly1305"``), ``chunk_entries`` (entries per upload message, default 2^22),
    ``key_dir`` (a folder from :func:`~secprune.secagg.identity.generate_identities` with every client's
    long-term key and the pinned directory; default: fresh keys in memory, so the simulator holds every
    client's private key) and ``dropouts``: a mapping stage -> client ids (stages ``advertise``, ``share``,
    ``upload``, ``consistency``, ``unmask``; a client listed under a stage sends nothing from that stage on),
    or a callable ``key -> mapping`` evaluated with the session key for the setup stages and with each epoch's
    key for the others.  With dropouts the result is the exact sum over the clients whose masked input arrived
    (``last_survivors``).  ``client_class`` replaces the clients' state machine (tests of malicious clients);
    ``threat`` gives a ready :class:`~secprune.secagg.params.Threat` instead of the three counts.
    """

    name = "pairwise"

    def __init__(self, *, n_clients: int, max_value: int = 1, seed: int = 0,
                 neighbours: int | None = None, threshold: int | None = None,
                 colluders: int | float | str | None = None, dropout_budget: int | float | str | None = None,
                 min_contributors: int | None = None, bits: int | None = None,
                 cipher: str = "aes-ctr", aead: str = "aes-gcm", chunk_entries: int = 1 << 22,
                 key_dir: str | Path | None = None, dropouts: DropoutSpec = None,
                 client_class: type[PairwiseClient] = PairwiseClient, threat: Threat | None = None) -> None:
        super().__init__(n_clients=n_clients, max_value=max_value)
        if not isinstance(max_value, (int, np.integer)) or max_value < 1:
            raise ValueError(f"max_value: expected an int >= 1, got {max_value!r}")
        need = ring_bits(n_clients=n_clients, max_value=max_value)
        self.bits = need if bits is None else int(bits)
        if not need <= self.bits <= 64:
            raise ValueError(f"bits: expected {need}..64 for {n_clients} clients with entries "
                             f"<= {max_value}, got {bits}")
        self.threat = threat or params.threat(n_clients, colluders=colluders, dropouts=dropout_budget,
                                              min_contributors=min_contributors, flag_prefix="")
        self.degree, self.threshold = pairwise_parameters(n_clients=n_clients, threat=self.threat,
                                                          neighbours=neighbours, threshold=threshold, flag_prefix="")
        if cipher not in CIPHERS:
            raise ValueError(f"cipher: expected one of {', '.join(CIPHERS)}, got {cipher!r}")
        if aead not in AEADS:
            raise ValueError(f"aead: expected one of {', '.join(AEADS)}, got {aead!r}")
        if not 64 <= chunk_entries <= MAX_CHUNK:
            raise ValueError(f"chunk_entries: expected 64..{MAX_CHUNK}, got {chunk_entries}")
        self.neighbours, self.seed = neighbours, seed
        self.cipher, self.aead, self.chunk_entries = cipher, aead, int(chunk_entries)
        self.dropouts = dropouts
        self.client_class = client_class
        if key_dir is not None:
            self.directory, self._identities = load_identities(key_dir)
            if self.directory.n_clients != n_clients or set(range(n_clients)) - set(self._identities):
                raise ValueError(f"key_dir: {key_dir} must hold the directory and keys of {n_clients} clients")
        else:
            self._identities = {i: IdentityKey.generate() for i in range(n_clients)}
            self.directory = KeyDirectory({i: k.public for i, k in self._identities.items()})
        self.ledgers = {i: Ledger(redraws=self.threat.redraws) for i in range(n_clients)}
        self.excluded: dict[int, int] = {}  # cheaters, not invited to later sessions
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

    def parameters(self) -> dict:
        """The derived protocol parameters and the threat they answer, for summaries."""
        h = self.n_clients if self.degree is None else self.degree + 1
        return {"graph": "complete" if self.degree is None else f"harary-{self.degree}", "holders": h,
                "threshold": self.threshold, "tolerated_dropouts_per_neighbourhood": h - self.threshold,
                **self.threat.as_dict()}
