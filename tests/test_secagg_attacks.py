"""The pairwise protocol attacked as an active server (and as malicious clients) would, through its bytes API.

Every test plays the attacker with real messages and checks the expected outcome: the victim's input stays
hidden, or a clear one-line error names the misbehaving party and the stage, or the sum is still correct.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from secprune.secagg import shamir
from secprune.secagg.crypto import MAC_BYTES, mac, pair_mask_key, self_mask_key
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.messages import HEADER, SERVER, Header, MsgType, encode
from secprune.secagg.pairwise_client import CHUNK_HEAD, PairwiseClient
from secprune.secagg.pairwise_server import PairwiseServer
from secprune.secagg.params import pairwise_parameters, threat
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import ring_bits, ring_dtype, ring_mask, unpack
from secprune.secagg.session import SessionConfig


class Federation:
    """n clients and a server driven step by step; tests intercept, alter or forge messages in between."""

    def __init__(self, n, *, degree=None, threshold=None, colluders=0, dropouts=0, lengths=(("m", 32),), epochs=None,
                 chunk=64, client_class=PairwiseClient):
        self.ids = {i: IdentityKey.generate() for i in range(n)}
        self.directory = KeyDirectory({i: k.public for i, k in self.ids.items()})
        self.threat = threat(n, colluders=colluders, dropouts=dropouts)
        degree, threshold = pairwise_parameters(n_clients=n, threat=self.threat, threshold=threshold,
                                                neighbours=n - 1 if degree is None else degree)  # None: complete
        self.n, self.t = n, threshold
        self.server = PairwiseServer(directory=self.directory, bits=ring_bits(n_clients=n, max_value=1),
                                     max_value=1, threshold=threshold, degree=degree,
                                     min_contributors=self.threat.min_contributors, epochs=epochs or [lengths],
                                     threat=self.threat, chunk_entries=chunk)
        self.clients = [client_class(i, identity=self.ids[i], directory=self.directory, threat=self.threat)
                        for i in range(n)]
        self.vectors = {}

    @property
    def graph(self):
        return self.server.graph

    def advertise(self, skip=()):
        for i, msg in self.server.session_messages().items():
            if i not in skip:
                self.server.receive_advertisement(self.clients[i].join(msg))
        if self.server.cfg.degree:  # the graph: committed nonces, revealed
            for i, msg in self.server.commits().items():
                self.server.receive_reveal(self.clients[i].reveal(msg))
        self.rosters = self.server.rosters()

    def bundles(self, skip=()):
        """ShareKeys up to the server's routing; returns the SHARE messages, not yet delivered."""
        for i, roster in self.rosters.items():
            if i not in skip:
                self.server.receive_share_bundle(self.clients[i].share_keys(roster))
        self.routes = self.server.close_shares()
        return self.routes

    def deliver(self):
        """Every routed SHARE to its holder, then each holder's (signed) acknowledgement to the server."""
        for i, blobs in self.routes.items():
            for blob in blobs:
                self.clients[i].receive_share(blob)
            self.server.receive_ack(self.clients[i].acknowledge())

    def settle(self):
        """Close the acknowledgements, let accused dealers open their shares, deliver CONFIRM."""
        confirms = self.server.close_acks()
        if self.server._stage == "open":
            for v, msg in confirms.items():
                self.server.receive_open(self.clients[v].open_shares(msg))
            confirms = self.server.close_open()
        for i, msg in confirms.items():
            if i in self.server.accepted:
                self.clients[i].confirm(msg)
        return confirms

    def share(self, skip=()):
        self.bundles(skip)
        self.deliver()
        self.settle()

    def upload(self, epoch=0, skip=(), seed=0):
        rng = np.random.default_rng(seed)
        lengths = dict(self.server.cfg.epochs[epoch])
        for i in self.server.accepted:
            self.vectors[(epoch, i)] = {m: rng.integers(0, 2, n).astype(np.uint8) for m, n in lengths.items()}
            if i not in skip:
                for msg in self.clients[i].upload(epoch, lambda name, i=i: self.vectors[(epoch, i)][name]):
                    self.server.receive_masked(msg)
        self.survivor_requests = self.server.close_upload()
        return self.survivor_requests

    def consistency(self, requests=None, skip=()):
        for i, req in (requests or self.survivor_requests).items():
            if i not in skip:
                self.server.receive_survivors_signature(self.clients[i].sign_survivors(req))
        self.unmask_requests = self.server.close_consistency()
        return self.unmask_requests

    def unmask(self, skip=()):
        for i, req in self.unmask_requests.items():
            if i not in skip:
                self.server.receive_unmask_response(self.clients[i].unmask(req))

    def expected(self, epoch=0, name="m"):
        return np.sum([self.vectors[(epoch, i)][name] for i in self.server.uploaded], axis=0)

    def run(self):
        self.advertise()
        self.share()
        self.upload()
        self.consistency()
        self.unmask()
        return self.server.finish()


def _survivors_msg(fed, receiver, ids, epoch=0):
    body = struct.pack(">II", epoch, len(ids)) + b"".join(i.to_bytes(4, "big") for i in ids)
    return encode(MsgType.SURVIVORS, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=receiver,
                  payload=body)


def _unmask_msg(fed, receiver, signatures, epoch=0):
    body = struct.pack(">II", epoch, len(signatures)) + b"".join(v.to_bytes(4, "big") + s for v, s in signatures)
    return encode(MsgType.UNMASK_REQUEST, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=receiver,
                  payload=body)


def _signature(msg):
    return msg[HEADER.size + 4:]


# -- split views and fake survivors ---------------------------------------------------------------------------

def test_fake_survivor_ids_are_refused():
    """Padding U3 with ids that do not exist (to pass |U3| >= t) is refused by every client."""
    fed = Federation(10, threshold=7)
    fed.advertise()
    fed.share()
    fed.upload()
    for padded in ([0, 7, 8, 9, 100, 101, 102], [0, 1, 2, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0, 6]):
        with pytest.raises(ProtocolError, match="client 0 .*unknown, repeated or unsorted ids"):
            fed.clients[0].sign_survivors(_survivors_msg(fed, 0, padded))


def test_split_view_yields_shares_of_only_one_kind_for_the_victim():
    """Complete graph, n=10, t=7: the server tells group A that victim 0 survived and group B that it dropped
    (each view padded with real ids to reach t).  Group B never holds t signatures on its view, so no client
    reveals a share of client 0's mask key: x_0 stays masked."""
    fed = Federation(10, threshold=7)
    fed.advertise()
    fed.share()
    fed.upload()
    view_a, view_b = list(range(10)), list(range(1, 10))  # B's view: client 0 "dropped"
    group_a, group_b = [0, 1, 2, 3, 4, 5, 6], [7, 8, 9]
    sig_a = {i: _signature(fed.clients[i].sign_survivors(_survivors_msg(fed, i, view_a))) for i in group_a}
    sig_b = {i: _signature(fed.clients[i].sign_survivors(_survivors_msg(fed, i, view_b))) for i in group_b}
    revealed = {"self": 0, "key": 0}
    for i in group_a:  # A has 7 signatures on its view: its members reveal shares of b_0 (allowed)
        resp = fed.clients[i].unmask(_unmask_msg(fed, i, sorted(sig_a.items())))
        kinds = [resp[HEADER.size + 8 + k * 25] for k in range(10)]
        revealed["self"] += kinds[0] == 0
        revealed["key"] += kinds[0] == 1
    for i in group_b:  # B: its own 3 signatures, and A's signatures relabelled as if on B's view
        with pytest.raises(SecAggAbortError, match=f"client {i} .*only 3 of this client's share holders signed"):
            fed.clients[i].unmask(_unmask_msg(fed, i, sorted(sig_b.items())))
    fed2 = Federation(10, threshold=7)
    fed2.advertise()
    fed2.share()
    fed2.upload()
    sig_a2 = {i: _signature(fed2.clients[i].sign_survivors(_survivors_msg(fed2, i, view_a))) for i in group_a}
    fed2.clients[7].sign_survivors(_survivors_msg(fed2, 7, view_b))
    with pytest.raises(ProtocolError, match=r"client 7 .*signature attributed to client \d does not verify"):
        fed2.clients[7].unmask(_unmask_msg(fed2, 7, sorted(sig_a2.items())))
    assert revealed == {"self": 7, "key": 0}  # b_0 alone: y_0 - PRG(b_0) is still masked by s_0v for all v


def test_client_signs_one_survivor_set_per_epoch_and_requires_its_own_holders():
    fed = Federation(6, threshold=4)
    fed.advertise()
    fed.share()
    fed.upload()
    fed.clients[0].sign_survivors(_survivors_msg(fed, 0, list(range(6))))
    with pytest.raises(ProtocolError, match="out of stage"):  # a second, different view is refused
        fed.clients[0].sign_survivors(_survivors_msg(fed, 0, [0, 1, 2, 3]))
    with pytest.raises(SecAggAbortError, match="only 3 of this client's share holders survived"):
        fed.clients[1].sign_survivors(_survivors_msg(fed, 1, [1, 2, 3]))  # |U3 & H(1)| < t
    with pytest.raises(ProtocolError, match="omits this client"):
        fed.clients[2].sign_survivors(_survivors_msg(fed, 2, [0, 1, 3, 4, 5]))


def test_survivors_must_be_neighbours_that_delivered_shares():
    fed = Federation(7, threshold=5)
    fed.advertise()
    fed.share(skip=[6])  # client 6 never delivered shares
    fed.upload()
    with pytest.raises(ProtocolError, match=r"survivors \[6\] were not among the accepted sharers"):
        fed.clients[0].sign_survivors(_survivors_msg(fed, 0, list(range(7))))
    fed2 = Federation(7, threshold=5)
    fed2.advertise()
    fed2.bundles()
    lost = [b for b in fed2.routes[0] if int.from_bytes(b[12:16], "big") == 6]
    fed2.routes[0] = [b for b in fed2.routes[0] if b not in lost]  # the server withholds 6's share from 0
    fed2.deliver()
    confirms = fed2.server.close_acks()
    with pytest.raises(ProtocolError, match=r"accepted neighbours \[6\] never delivered valid shares"):
        fed2.clients[0].confirm(confirms[0])


# -- rosters and keys -------------------------------------------------------------------------------------------

def _roster(fed, receiver, ids):
    reveals = fed.server._reveals  # a sparse graph's ROSTER opens with every member's nonce
    head = (len(reveals).to_bytes(4, "big") + b"".join(u.to_bytes(4, "big") + r for u, r in sorted(reveals.items()))
            if fed.server.cfg.degree else b"")
    body = b"".join(v.to_bytes(4, "big") + fed.server._adverts[v] for v in ids)
    return encode(MsgType.ROSTER, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=receiver,
                  payload=head + len(ids).to_bytes(4, "big") + body)


@pytest.mark.parametrize("n, k", [(16, 4), (64, 8)])
def test_roster_inflation_with_non_neighbours_is_refused(n, k):
    """Sparse graph (t = default, 2t > k + 1): a roster naming more holders than N(u), even with genuine signed
    advertisements of other clients, would let the server collect t shares of each kind; it is refused."""
    fed = Federation(n, degree=k)
    fed.advertise()
    victim = 0
    strangers = sorted(set(range(1, n)) - fed.graph[victim])[:k]
    inflated = _roster(fed, victim, sorted(fed.graph[victim] | set(strangers)))
    with pytest.raises(ProtocolError, match=f"client 0 .*roster lists {2 * k} clients, more than the {k} neighbours"):
        fed.clients[victim].share_keys(inflated)
    fed2 = Federation(n, degree=k)  # a fresh client (a refused roster leaves the first one half-read)
    fed2.advertise()
    swapped = sorted(sorted(fed2.graph[victim])[:k - 1] + strangers[:1])
    with pytest.raises(ProtocolError, match=f"roster lists client {strangers[0]}, which is not a neighbour"):
        fed2.clients[victim].share_keys(_roster(fed2, victim, swapped))


def _arc_attack(fed, gaps):
    """Fake the dropout of the clients at ring positions ``gaps`` (their uploads are ignored) so that the
    survivors fall into two arcs; returns (arc, upload messages, survivors' plaintext)."""
    from secprune.secagg.crypto import graph_seed
    from secprune.secagg.graph import ring_order

    fed.advertise()
    seed = graph_seed(fed.server._reveals, session=fed.server.cfg.digest)
    order = ring_order(sorted(fed.server._reveals), seed)  # the ring, drawn from every client's nonce
    fake_dropped = {order[p] for p in gaps}
    arc = [order[p] for p in range(gaps[1] + 1, gaps[2])]  # between the two gaps
    fed.share()
    uploads = {}
    for i in range(fed.n):
        fed.vectors[(0, i)] = {"m": np.random.default_rng(i).integers(0, 2, 2000).astype(np.uint8)}
        (uploads[i],) = list(fed.clients[i].upload(0, lambda name, i=i: fed.vectors[(0, i)]["m"]))
        if i not in fake_dropped:
            fed.server.receive_masked(uploads[i])
    fed.survivor_requests = fed.server.close_upload()
    return arc, uploads, fake_dropped


def test_faked_dropouts_cannot_cut_the_sparse_ring_at_the_safe_threshold():
    """n=16, k=4, t=4 = k/2 + 2 (the safe level): the server ignores two runs of k/2 = 2 clients to split the
    survivors into two arcs and learn each arc's sum.  The clients next to a gap keep only 3 < t live holders:
    they refuse to sign, and their self masks cannot be removed, so no arc sum (nor the total) comes out."""
    fed = Federation(16, degree=4, threshold=4, lengths=(("m", 2000),), chunk=4096)
    arc, _, dropped = _arc_attack(fed, gaps=[0, 1, 8, 9])
    refused = []
    for i, req in fed.survivor_requests.items():
        try:
            fed.server.receive_survivors_signature(fed.clients[i].sign_survivors(req))
        except SecAggAbortError as exc:
            assert "share holders survived, fewer than t=4" in str(exc)
            refused.append(i)
    assert arc[0] in refused and arc[-1] in refused  # both ends of the arc
    fed.unmask_requests = fed.server.close_consistency()
    for i, req in fed.unmask_requests.items():
        try:
            fed.server.receive_unmask_response(fed.clients[i].unmask(req))
        except SecAggAbortError:
            pass
    with pytest.raises(SecAggAbortError, match="fewer than the threshold t=4"):
        fed.server.finish()


def test_below_the_safe_threshold_the_same_attack_leaks_an_arc_sum(monkeypatch):
    """The same attack with t = 3 = k/2 + 1 (refused by check_options; forced here) gives the server the exact
    sum of the arc: the reason the code refuses t < k/2 + 2."""
    import secprune.secagg.pairwise_client as pc
    import secprune.secagg.params as params
    import secprune.secagg.session as session

    for module in (pc, session):  # every party accepts what it would refuse
        monkeypatch.setattr(module, "check_pairwise", lambda **kw: None)
    monkeypatch.setattr(params, "sparse_bounds", lambda n, k, t: (3, k + 1))
    fed = Federation(16, degree=4, threshold=3, lengths=(("m", 2000),), chunk=4096)
    arc, uploads, dropped = _arc_attack(fed, gaps=[0, 1, 8, 9])
    fed.consistency()
    fed.unmask()
    cfg, server = fed.server.cfg, fed.server
    acc = np.zeros(2000, ring_dtype(cfg.bits))
    for u in arc:  # the attacker's arithmetic on what it legitimately holds
        acc += unpack(uploads[u][HEADER.size + CHUNK_HEAD.size:-MAC_BYTES], cfg.bits, 2000)
        seed = server._recover(0, u)
        MaskPRG().sub(acc, self_mask_key(seed, session=cfg.digest, epoch=0))
        for v in fed.graph[u] & dropped:
            from secprune.secagg.crypto import mask_secret_key

            sk = mask_secret_key(server._recover(1, v), session=cfg.digest, epoch=0)
            key = pair_mask_key(sk, server._mask_pk(u, 0), u=u, v=v, session=cfg.digest, epoch=0)
            (MaskPRG().sub if u < v else MaskPRG().add)(acc, key)
    acc &= acc.dtype.type(ring_mask(cfg.bits))
    np.testing.assert_array_equal(acc, np.sum([fed.vectors[(0, u)]["m"] for u in arc], axis=0))


def test_substituted_keys_are_refused():
    """The server replaces client 1's advertised keys with its own, keeping or re-signing the signature."""
    fed = Federation(4, threshold=3)
    fed.advertise()
    good = fed.rosters[0]
    start = HEADER.size + 4 + 4  # first roster entry: id, then c_pk
    assert int.from_bytes(good[HEADER.size + 4:start], "big") == 1
    forged = bytearray(good)
    forged[start:start + 32] = IdentityKey.generate().public  # any 32 bytes the server controls
    with pytest.raises(ProtocolError, match="keys advertised for client 1 are not signed by client 1's pinned key"):
        fed.clients[0].share_keys(bytes(forged))


def test_server_cannot_use_another_directory_or_an_unsafe_configuration():
    fed = Federation(4, threshold=3)
    other = KeyDirectory({i: IdentityKey.generate().public for i in range(4)})
    rogue = PairwiseServer(directory=other, bits=3, max_value=1, threshold=3, degree=None, min_contributors=3,
                           epochs=[(("m", 8),)], threat=fed.threat)
    with pytest.raises(ProtocolError, match="client 0 .*refused: .*another key directory"):
        fed.clients[0].join(rogue.session_messages()[0])
    cfg = fed.server.cfg
    from dataclasses import replace

    for unsafe, match in ((replace(cfg, threshold=2), "below the safe level 3"), (replace(cfg, bits=1), "ring"),
                          (replace(cfg, min_contributors=2), "at least 2 contributors per sum, below this client's 3"),
                          (replace(cfg, epochs=((("m", 8),), (("m", 8),))), "names m twice"),
                          (replace(cfg, epochs=((("../mask/m", 8),),)), "no '/'"),
                          (replace(cfg, epochs=((("./m", 8),),)), "no '/'")):
        msg = encode(MsgType.SESSION, round_id=unsafe.session_id, sender=SERVER, receiver=1, payload=unsafe.encode())
        with pytest.raises(ProtocolError, match=f"client 1 .*refused: .*{match}"):
            fed.clients[1].join(msg)


def test_clients_shown_different_configurations_cannot_complete():
    """Client 0 gets another configuration than its neighbours; its signed keys do not verify for them."""
    from dataclasses import replace

    fed = Federation(5, threshold=4)
    twisted = replace(fed.server.cfg, chunk_entries=128)
    msg = encode(MsgType.SESSION, round_id=twisted.session_id, sender=SERVER, receiver=0, payload=twisted.encode())
    adv0 = fed.clients[0].join(msg)
    for i, m in fed.server.session_messages().items():
        if i:
            fed.server.receive_advertisement(fed.clients[i].join(m))
    with pytest.raises(ProtocolError, match="from round"):  # the honest server refuses it (other session id)
        fed.server.receive_advertisement(adv0)
    fed.server._adverts[0] = adv0[HEADER.size:]  # a lying server forwards it anyway
    rosters = fed.server.rosters()
    with pytest.raises(ProtocolError, match="client 1 .*keys advertised for client 0 are not signed"):
        fed.clients[1].share_keys(rosters[1])


# -- integrity: shares, uploads, late messages --------------------------------------------------------------------

def test_bit_flip_in_unmask_response_is_caught_and_the_sum_stays_correct():
    fed = Federation(6, threshold=4)
    fed.advertise()
    fed.share()
    fed.upload()
    fed.consistency()
    response = fed.clients[2].unmask(fed.unmask_requests[2])
    flipped = bytearray(response)
    flipped[HEADER.size + 8 + 5] ^= 0x01  # first byte of the first share
    with pytest.raises(ProtocolError, match="UNMASK_RESPONSE claiming to be from client 2 failed authentication"):
        fed.server.receive_unmask_response(bytes(flipped))
    fed.server.receive_unmask_response(response)  # the genuine one is still accepted
    fed.unmask(skip=[2])
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())


def test_malicious_holder_with_a_wrong_share_is_named_and_ignored():
    """Client 2 reveals a wrong share of b_0 (correctly MACed): its commitment check names client 2; the
    others' shares still give the exact sum."""
    fed = Federation(6, threshold=4)
    fed.advertise()
    fed.share()
    fed.upload()
    fed.consistency()
    held = fed.clients[2]._held[0]
    held[0, 0] = (held[0, 0] + 1) % shamir.P  # its share of client 0's self-mask seed, epoch 0
    bad = fed.clients[2].unmask(fed.unmask_requests[2])
    with pytest.raises(ProtocolError, match="client 2's share of client 0's self-mask seed does not match client 0's "
                                            "commitment \\(bad share from client 2\\)"):
        fed.server.receive_unmask_response(bad)
    fed.unmask(skip=[2])
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())


def test_relabelled_masked_upload_is_rejected():
    fed = Federation(4, threshold=3)
    fed.advertise()
    fed.share()
    fed.vectors[(0, 1)] = {"m": np.ones(32, np.uint8)}
    (chunk,) = list(fed.clients[1].upload(0, lambda name: fed.vectors[(0, 1)][name]))
    relabelled = bytearray(chunk)
    relabelled[12:16] = (2).to_bytes(4, "big")  # claim it is client 2's upload
    with pytest.raises(ProtocolError, match="MASKED chunk claiming to be from client 2 failed authentication"):
        fed.server.receive_masked(bytes(relabelled))
    fed.server.receive_masked(chunk)
    assert fed.server.uploaded == [1]


def test_forged_upload_without_the_mac_key_is_rejected():
    fed = Federation(4, threshold=3)
    fed.advertise()
    fed.share()
    head = Header(MsgType.MASKED, fed.server.cfg.session_id, 3, SERVER).pack()
    body = CHUNK_HEAD.pack(0, 0, 0, 32, fed.server.cfg.bits) + bytes(12)
    forged = head + body + mac(b"k" * 32, position=head + body[:CHUNK_HEAD.size], data=head + body)
    with pytest.raises(ProtocolError, match="claiming to be from client 3 failed authentication"):
        fed.server.receive_masked(forged)


class PlusFive(PairwiseClient):
    """A malicious client that adds 5 to entry 0 of its masked upload."""

    def _masked_chunk(self, x, keys, stream_offset):
        y = super()._masked_chunk(x, keys, stream_offset)
        if stream_offset == 0:
            y[0] = (int(y[0]) + 5) & ring_mask(self.cfg.bits)
        return y


def test_out_of_range_sum_from_a_malicious_client_is_refused():
    fed = Federation(8, threshold=6)
    fed.clients[3] = PlusFive(3, identity=fed.ids[3], directory=fed.directory, threat=fed.threat)
    fed.advertise()
    fed.share()
    for i in range(8):  # everyone votes 1 at entry 0: the true sum there is 8 = |U3|, client 3 makes it 13
        fed.vectors[(0, i)] = {"m": np.ones(32, np.uint8)}
        for msg in fed.clients[i].upload(0, lambda name, i=i: fed.vectors[(0, i)][name]):
            fed.server.receive_masked(msg)
    fed.survivor_requests = fed.server.close_upload()
    fed.consistency()
    fed.unmask()
    with pytest.raises(ProtocolError, match=r"sum of m reaches 13 > \|U3\| x max_value = 8.*result refused"):
        fed.server.finish()


def test_late_and_out_of_stage_messages_are_rejected_without_breaking_the_round():
    fed = Federation(5, threshold=4)
    sessions = fed.server.session_messages()
    advert = {i: fed.clients[i].join(sessions[i]) for i in range(5)}
    for i in range(4):
        fed.server.receive_advertisement(advert[i])
    fed.rosters = fed.server.rosters()
    with pytest.raises(ProtocolError, match=r"server \(share\): ADVERTISE from client4 arrived out of stage"):
        fed.server.receive_advertisement(advert[4])  # late: client 4 is not added to U1
    assert 4 not in fed.rosters
    fed.clients[4] = None
    fed.share()
    lengths = {"m": 32}
    late = {}
    for i in range(4):
        fed.vectors[(0, i)] = {"m": np.random.default_rng(i).integers(0, 2, 32).astype(np.uint8)}
        msgs = list(fed.clients[i].upload(0, lambda name, i=i: fed.vectors[(0, i)][name]))
        if i == 3:
            late[i] = msgs
            continue
        for m in msgs:
            fed.server.receive_masked(m)
    with pytest.raises(SecAggAbortError, match="masked input collection"):  # 3 < t = 4: aborts cleanly
        fed.server.close_upload()
    del lengths

    fed = Federation(6, threshold=4)
    fed.advertise()
    fed.share()
    fed.vectors = {}
    msgs = {}
    for i in range(6):
        fed.vectors[(0, i)] = {"m": np.random.default_rng(i).integers(0, 2, 32).astype(np.uint8)}
        msgs[i] = list(fed.clients[i].upload(0, lambda name, i=i: fed.vectors[(0, i)][name]))
    for i in range(5):
        for m in msgs[i]:
            fed.server.receive_masked(m)
    fed.survivor_requests = fed.server.close_upload()
    with pytest.raises(ProtocolError, match=r"MASKED from client5 arrived out of stage"):
        fed.server.receive_masked(msgs[5][0])  # late upload: rejected, U3 unchanged
    fed.consistency()
    with pytest.raises(ProtocolError, match="out of stage"):
        fed.server.receive_masked(msgs[5][0])
    fed.unmask()
    np.testing.assert_array_equal(fed.server.finish()["m"], np.sum([fed.vectors[(0, i)]["m"] for i in range(5)], 0))


def test_replayed_and_early_messages_are_rejected():
    fed = Federation(5, threshold=4)
    fed.advertise()
    fed.share()
    fed.upload()
    sig = fed.clients[0].sign_survivors(fed.survivor_requests[0])
    fed.server.receive_survivors_signature(sig)
    with pytest.raises(ProtocolError, match="not a survivor or repeated"):
        fed.server.receive_survivors_signature(sig)
    with pytest.raises(ProtocolError, match="UNMASK_REQUEST of epoch 0 out of stage"):
        fed.clients[1].unmask(_unmask_msg(fed, 1, []))  # before client 1 signed anything
    for i in range(1, 5):
        fed.server.receive_survivors_signature(fed.clients[i].sign_survivors(fed.survivor_requests[i]))
    fed.unmask_requests = fed.server.close_consistency()
    response = fed.clients[0].unmask(fed.unmask_requests[0])
    with pytest.raises(ProtocolError, match="out of stage"):
        fed.clients[0].unmask(fed.unmask_requests[0])  # a client answers one unmask request per epoch
    fed.server.receive_unmask_response(response)
    with pytest.raises(ProtocolError, match="not asked or repeated"):
        fed.server.receive_unmask_response(response)
    with pytest.raises(ProtocolError, match="replayed SHARE|out of stage"):
        fed.clients[1].receive_share(fed.routes[1][0])


def test_messages_of_another_session_and_truncated_messages_are_rejected():
    old, new = Federation(4, threshold=3), Federation(4, threshold=3)
    old.advertise()
    old.share()
    new.advertise()
    new.bundles()
    with pytest.raises(ProtocolError, match="from round"):
        new.clients[1].receive_share(old.routes[1][0])
    new.deliver()
    new.settle()
    (old_chunk,) = list(old.clients[0].upload(0, lambda name: np.ones(32, np.uint8)))
    with pytest.raises(ProtocolError, match="from round"):
        new.server.receive_masked(old_chunk)
    (chunk,) = list(new.clients[0].upload(0, lambda name: np.ones(32, np.uint8)))
    with pytest.raises(ProtocolError):
        new.server.receive_masked(chunk[:-3])
    with pytest.raises(ProtocolError, match="truncated"):
        new.server.receive_masked(chunk[:HEADER.size + 3])
    new.server.receive_masked(chunk)  # the intact message still counts


def test_tampered_or_misrouted_shares_are_rejected():
    """A SHARE altered on the way (a commitment, the ephemeral key, the ciphertext or its tag) fails the holder's
    checks: the holder sets the dealer aside and complains, quoting what it got; the server compares the quote
    with the SHARE the dealer put in its MACed bundle, so a complaint about an altered copy is refused (the dealer
    is never asked to open it), and a misaddressed SHARE is refused at once."""
    for position in (HEADER.size + 3, HEADER.size + 33, -20, -1):  # commitment, epk, ciphertext, tag
        fed = Federation(4, threshold=3)
        fed.advertise()
        routes = fed.bundles()
        blob = bytearray(routes[1][0])
        blob[position] ^= 0x01
        dealer = int.from_bytes(blob[12:16], "big")
        fed.clients[1].receive_share(bytes(blob))
        assert set(fed.clients[1]._complaints) == {dealer} and dealer not in fed.clients[1]._held
        for blob in routes[1][1:]:
            fed.clients[1].receive_share(blob)
        with pytest.raises(ProtocolError, match=f"client 1 complains about a SHARE from client {dealer} that this "
                                                f"server did not route to it"):
            fed.server.receive_ack(fed.clients[1].acknowledge())
    fed = Federation(4, threshold=3)
    fed.advertise()
    routes = fed.bundles()
    blob = bytearray(routes[1][0])
    blob[16:20] = (2).to_bytes(4, "big")  # addressed to another client
    with pytest.raises(ProtocolError, match="addressed"):
        fed.clients[1].receive_share(bytes(blob))


def _corrupt_dealer(monkeypatch, dealer, holder):
    """Make ``dealer`` commit to garbage for its shares to ``holder`` (the SHARE is still signed by it)."""
    import secprune.secagg.pairwise_client as pc

    real = pc.share_commitment
    monkeypatch.setattr(pc, "share_commitment", lambda share, **kw: bytes(16) if (kw["owner"], kw["holder"]) == (
        dealer, holder) else real(share, **kw))
    return lambda: monkeypatch.setattr(pc, "share_commitment", real)


def test_a_dealer_of_a_bad_share_is_excluded_and_the_sum_completes(monkeypatch):
    """Client 3 deals holder 1 shares that miss the commitments it signed them with.  Holder 1 does not abort:
    it complains (signed, quoting the SHARE); client 3 opens that one message; the server replays the checks,
    excludes client 3 naming why, and the others' sum completes (before, one dealer stopped every session)."""
    fed = Federation(6, threshold=4)
    fed.advertise()
    restore = _corrupt_dealer(monkeypatch, dealer=3, holder=1)
    fed.bundles()
    restore()
    fed.deliver()
    assert set(fed.clients[1]._complaints) == {3}
    fed.settle()
    assert fed.server.exclusions() == {3: "a share it dealt failed its holder's checks"}
    assert fed.server.accepted == [0, 1, 2, 4, 5]
    with pytest.raises(SecAggAbortError, match="client 3 .*excluded this client from the session \\(a share it dealt"):
        fed.clients[3].confirm(encode(MsgType.CONFIRM, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=3,
                                      payload=fed.server._confirm_body()))
    fed.upload()
    fed.consistency()
    fed.unmask()
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())
    assert 3 not in fed.server.uploaded


class FalseAccuser(PairwiseClient):
    """A malicious holder that complains about client 4's share although it checked out."""

    def receive_share(self, message):
        super().receive_share(message)
        dealer = int.from_bytes(message[12:16], "big")
        if dealer == 4:
            del self._held[4]
            self._complaints[4] = message


def test_a_false_complaint_excludes_the_complainer():
    """Holder 2 complains about client 4's good share: the opening shows the share is good, so client 2 is the
    one excluded (not obeyed); the others finish."""
    fed = Federation(6, threshold=4)
    fed.clients[2] = FalseAccuser(2, identity=fed.ids[2], directory=fed.directory, threat=fed.threat)
    fed.advertise()
    fed.share()
    assert fed.server.exclusions() == {2: "it complained about a good share"}
    fed.upload()
    fed.consistency()
    fed.unmask()
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())
    assert fed.server.uploaded == [0, 1, 3, 4, 5]


def test_an_accused_dealer_that_does_not_open_is_excluded(monkeypatch):
    fed = Federation(6, threshold=4)
    fed.advertise()
    restore = _corrupt_dealer(monkeypatch, dealer=0, holder=5)
    fed.bundles()
    restore()
    fed.deliver()
    requests = fed.server.close_acks()
    assert set(requests) == {0}  # only the accused dealer is asked, and it stays silent
    confirms = fed.server.close_open()
    assert fed.server.exclusions() == {0: "it did not open a share it was accused of"}
    for i, msg in confirms.items():
        if i in fed.server.accepted:
            fed.clients[i].confirm(msg)
    fed.upload()
    fed.consistency()
    fed.unmask()
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())


def test_a_dealer_opens_only_for_a_signed_complaint_about_its_own_message(monkeypatch):
    """An opening reveals one share: a server may not obtain it with a complaint it forged, one it replays, or one
    about a message the dealer never sent."""
    fed = Federation(5, threshold=4)
    fed.advertise()
    restore = _corrupt_dealer(monkeypatch, dealer=1, holder=0)
    fed.bundles()
    restore()
    fed.deliver()
    request = fed.server.close_acks()[1]
    ack = fed.server._acks[0]
    forged = bytearray(ack)
    forged[-1] ^= 1  # not client 0's signature any more
    body = len(forged).to_bytes(4, "big") + bytes(forged)
    bad = encode(MsgType.OPEN_REQUEST, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=1,
                 payload=(1).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError, match="client 1 .*complaint attributed to client 0 is not signed by it"):
        fed.clients[1].open_shares(bad)
    other = fed.server._acks[2]  # client 2 signed an empty acknowledgement: it names no SHARE of client 1
    bad = encode(MsgType.OPEN_REQUEST, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=1,
                 payload=(1).to_bytes(4, "big") + len(other).to_bytes(4, "big") + other)
    with pytest.raises(ProtocolError, match="client 2's complaint does not name the SHARE this client sent it"):
        fed.clients[1].open_shares(bad)
    opened = fed.clients[1].open_shares(request)
    with pytest.raises(ProtocolError, match="opened already"):
        fed.clients[1].open_shares(request)
    fed.server.receive_open(opened)
    fed.server.close_open()
    assert fed.server.exclusions() == {1: "a share it dealt failed its holder's checks"}


def test_dealer_with_inconsistent_shares_is_named_at_reconstruction(monkeypatch):
    """Client 0 deals holder 0's own b-share off the polynomial (committed as dealt, so every per-share check
    passes); the rebuilt seed then misses client 0's signed commitment and the server names client 0."""
    import secprune.secagg.pairwise_client as pc

    real = pc.shamir.split

    def crooked(secrets, *, threshold, xs):
        out = real(secrets, threshold=threshold, xs=xs)
        if xs[0] == 1:  # holders of client 0 start at x = 1 (client 0 itself)
            out[0, 0, 0] = (out[0, 0, 0] + 1) % shamir.P
        return out

    fed = Federation(4, threshold=3)
    monkeypatch.setattr(pc.shamir, "split", crooked)
    fed.advertise()
    fed.share()
    monkeypatch.setattr(pc.shamir, "split", real)
    fed.upload()
    fed.consistency()
    fed.unmask()
    with pytest.raises(ProtocolError, match="client 0's shares do not rebuild the self-mask seed it committed to"):
        fed.server.finish()


# -- dropouts mid-stream and epochs ----------------------------------------------------------------------------

def test_partial_upload_counts_as_dropout_and_is_discarded():
    fed = Federation(6, threshold=4, lengths=(("m", 500),), chunk=64)  # 8 chunks per upload
    fed.advertise()
    fed.share()
    rng = np.random.default_rng(0)
    for i in range(6):
        fed.vectors[(0, i)] = {"m": rng.integers(0, 2, 500).astype(np.uint8)}
        stream = fed.clients[i].upload(0, lambda name, i=i: fed.vectors[(0, i)][name])
        for k, msg in enumerate(stream):
            if i == 2 and k == 4:
                break  # client 2's connection breaks after 4 chunks
            fed.server.receive_masked(msg)
    fed.survivor_requests = fed.server.close_upload()
    assert fed.server.uploaded == [0, 1, 3, 4, 5]
    fed.consistency()
    fed.unmask()
    np.testing.assert_array_equal(fed.server.finish()["m"], fed.expected())


def test_out_of_order_chunk_is_rejected():
    fed = Federation(4, threshold=3, lengths=(("m", 200),), chunk=64)
    fed.advertise()
    fed.share()
    chunks = list(fed.clients[0].upload(0, lambda name: np.ones(200, np.uint8)))
    with pytest.raises(ProtocolError, match="expected \\(epoch 0, matrix 0, offset 0"):
        fed.server.receive_masked(chunks[1])
    fed.server.receive_masked(chunks[0])
    with pytest.raises(ProtocolError, match="offset 64"):
        fed.server.receive_masked(chunks[0])  # a replayed chunk is out of order too


def test_revealing_one_epochs_mask_key_does_not_unmask_another_epoch():
    """Client 3 skips epoch 0 (the server rebuilds its epoch-0 mask key) and uploads in epoch 1 (the server
    rebuilds its epoch-1 self-mask seed).  With both, the server still cannot strip client 3's epoch-1 upload."""
    fed = Federation(5, threshold=4, epochs=[(("m0", 4000),), (("m1", 4000),)], chunk=4096)
    fed.advertise()
    fed.share()
    fed.upload(epoch=0, skip=[3])
    fed.consistency()
    fed.unmask()
    fed.server.finish()  # it rebuilt client 3's epoch-0 mask key; the attacker redoes it from the same shares
    holders = [0, 1, 2, 4]
    shares = np.stack([fed.clients[h]._held[3][1] for h in holders])[:, None, :]  # s-shares of client 3, epoch 0
    mask_key_seed = bytes(shamir.combine(xs=[h + 1 for h in holders], shares=shares)[0])
    from secprune.secagg.crypto import mask_secret_key

    epoch0_key = mask_secret_key(mask_key_seed, session=fed.server.cfg.digest, epoch=0)
    upload = {}
    rng = np.random.default_rng(1)
    for i in range(5):
        fed.vectors[(1, i)] = {"m1": rng.integers(0, 2, 4000).astype(np.uint8)}
        (upload[i],) = list(fed.clients[i].upload(1, lambda name, i=i: fed.vectors[(1, i)][name]))
    b_shares = np.stack([fed.clients[h]._held[3][2] for h in holders])[:, None, :]  # b-shares, epoch 1
    b_seed = bytes(shamir.combine(xs=[h + 1 for h in holders], shares=b_shares)[0])
    cfg = fed.server.cfg
    y = unpack(upload[3][HEADER.size + CHUNK_HEAD.size:-MAC_BYTES], cfg.bits, 4000).astype(ring_dtype(cfg.bits))
    prg = MaskPRG()
    prg.sub(y, self_mask_key(b_seed, session=cfg.digest, epoch=1))
    for v in sorted(fed.graph[3]):  # the attacker's best guess: epoch-0 key used for epoch 1
        key = pair_mask_key(epoch0_key, fed.server._mask_pk(v, 1), u=3, v=v, session=cfg.digest, epoch=1)
        (prg.sub if 3 < v else prg.add)(y, key)
    y &= y.dtype.type(ring_mask(cfg.bits))
    assert (y == fed.vectors[(1, 3)]["m1"]).mean() < 0.4  # chance level 1/8, not the input


# -- dropouts of holders below t in a sparse graph, honest run sanity ---------------------------------------

def test_manual_honest_runs_are_exact():
    for kwargs in ({"n": 6}, {"n": 12, "degree": 4}, {"n": 7, "lengths": (("a", 100), ("b", 0), ("c", 7))}):
        n = kwargs.pop("n")
        fed = Federation(n, **kwargs)
        out = fed.run()
        for name, _ in fed.server.cfg.epochs[0]:
            np.testing.assert_array_equal(out[name], fed.expected(name=name))


def test_the_server_routes_shares_it_cannot_read():
    """SHARE messages carry the shares only inside the AEAD under c_uv, which never crosses the wire."""
    fed = Federation(4, threshold=3)
    fed.advertise()
    routes = fed.bundles()
    for blob in routes[1]:
        fed.clients[1].receive_share(blob)
        owner = int.from_bytes(blob[12:16], "big")
        share = shamir.shares_to_bytes(fed.clients[1]._held[owner][0])
        assert share not in blob and share[:8] not in blob
    cfg = SessionConfig.decode(fed.server.cfg.encode())
    assert cfg == fed.server.cfg and cfg.digest == fed.server.cfg.digest
