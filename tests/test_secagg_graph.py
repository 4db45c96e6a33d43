"""Neighbours the server cannot choose, and colluders as a stated parameter: the graph comes from every member's
committed nonce, a server that re-draws is stopped by the clients' ledgers, and at the derived parameters the
split-view attack fails even with every colluder next to the victim."""

from __future__ import annotations

import numpy as np
import pytest

from secprune.secagg.crypto import graph_seed
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.graph import harary
from secprune.secagg.messages import HEADER, SERVER, MsgType, encode
from secprune.secagg.pairwise_client import PairwiseClient
from secprune.secagg.pairwise_server import PairwiseServer
from secprune.secagg.params import pairwise_parameters, threat

from .test_secagg_attacks import Federation, _signature, _survivors_msg, _unmask_msg


def _sparse(n=10, **kw):
    fed = Federation(n, degree=4, threshold=4, **kw)
    for i, msg in fed.server.session_messages().items():
        fed.server.receive_advertisement(fed.clients[i].join(msg))
    return fed


def test_the_graph_is_drawn_from_every_members_nonce():
    fed = _sparse()
    commits = fed.server.commits()
    for i, msg in commits.items():
        fed.server.receive_reveal(fed.clients[i].reveal(msg))
    rosters = fed.server.rosters()
    for i, msg in rosters.items():
        fed.clients[i].share_keys(msg)
    members = list(range(10))
    seed = graph_seed(fed.server._reveals, session=fed.server.cfg.digest)
    assert all(fed.clients[i]._neighbours == harary(members, degree=4, seed=seed)[i] for i in members)
    assert [fed.server.graph[i] for i in members] == [fed.clients[i]._neighbours for i in members]
    other = dict(fed.server._reveals)
    other[7] = bytes(16)  # any one member's nonce changes the ring
    assert harary(members, degree=4, seed=graph_seed(other, session=fed.server.cfg.digest)) != \
        harary(members, degree=4, seed=seed)


def _reveal_all(fed):
    for i, msg in fed.server.commits().items():
        fed.server.receive_reveal(fed.clients[i].reveal(msg))


def test_a_server_cannot_substitute_withhold_or_pick_the_nonces():
    fed = _sparse()
    _reveal_all(fed)
    good = fed.server.rosters()[0]
    start = HEADER.size + 4 + 4  # the first revealed nonce
    forged = bytearray(good)
    forged[start] ^= 1
    with pytest.raises(ProtocolError, match="client 0 .*client 0's revealed nonce does not match its signed commit"):
        fed.clients[0].share_keys(bytes(forged))
    fed = _sparse()
    _reveal_all(fed)
    del fed.server._reveals[5]  # the server leaves one member's nonce out of the draw
    with pytest.raises(SecAggAbortError, match=r"clients \[5\] committed to a nonce and did not reveal it"):
        fed.server.rosters()
    fed = _sparse()
    _reveal_all(fed)
    full = fed.server.rosters()[1]
    count = 10
    head = HEADER.size
    shortened = full[:head] + (count - 1).to_bytes(4, "big") + full[head + 4 + 20:]  # drop member 0's nonce
    body = encode(MsgType.ROSTER, round_id=fed.server.cfg.session_id, sender=SERVER, receiver=1,
                  payload=shortened[head:])
    with pytest.raises(ProtocolError, match=r"nonces of \[0\] are missing"):
        fed.clients[1].share_keys(body)
    with pytest.raises(ProtocolError, match="nonce does not match its commitment"):
        fed2 = _sparse()
        fed2.server.commits()
        fed2.server.receive_reveal(encode(MsgType.REVEAL, round_id=fed2.server.cfg.session_id, sender=3,
                                          receiver=SERVER, payload=bytes(16)))


def test_a_member_list_that_is_forged_or_too_small_is_refused():
    fed = _sparse()
    commits = fed.server.commits()
    msg = bytearray(commits[0])
    msg[-1] ^= 1  # the last member's signature
    with pytest.raises(ProtocolError, match="graph commitment listed for client 9 is not signed by its pinned key"):
        fed.clients[0].reveal(bytes(msg))
    # a server that commits only 4 members (the others "did not advertise"): unsafe for the clients' threat
    fed = Federation(12, degree=4, threshold=4)
    for i, m in fed.server.session_messages().items():
        if i < 4:
            fed.server.receive_advertisement(fed.clients[i].join(m))
    commits = fed.server.commits()
    with pytest.raises(ProtocolError, match="client 0 .*refused: .*degree 4: a sparse graph needs an even degree "
                                            "4..2 .*the server committed 4 members"):
        fed.clients[0].reveal(commits[0])


def test_a_server_that_redraws_the_graph_is_stopped_by_the_clients():
    """The issue's grinding: abort every session whose graph the server dislikes and start another.  Each client
    counts the graphs it helped draw that never reached its upload; past the budget (16, which the parameters'
    failure probability already includes) it refuses to draw again."""
    fed = _sparse()
    ledgers = [c.ledger for c in fed.clients]
    graphs = set()
    for attempt in range(17):
        fed = _sparse() if attempt else fed
        for i, c in enumerate(fed.clients):  # the same clients: their ledgers outlive the sessions
            c.ledger = ledgers[i]
        commits = fed.server.commits()
        if attempt == 16:
            with pytest.raises(ProtocolError, match="16 sessions drew a neighbour graph and never reached this "
                                                    "client's upload .*refusing to draw another"):
                fed.clients[0].reveal(commits[0])
            break
        for i, msg in commits.items():
            fed.server.receive_reveal(fed.clients[i].reveal(msg))
        fed.server.rosters()
        graphs.add(tuple(sorted(fed.server.graph[0])))  # the server looks at the graph ... and abandons it
    assert len(graphs) > 1  # every draw was fresh
    # a session that reaches the upload settles its draw: honest runs never run out
    fed = Federation(10, degree=4, threshold=4)
    fed.run()
    assert all(c.ledger.pending_draws == 0 for c in fed.clients)


@pytest.mark.parametrize("a_size", [5, 4])
def test_split_view_fails_at_the_default_threat_with_every_colluder_a_holder(a_size):
    """16 clients, the default threat (5 colluders, t = 11 on the complete graph).  The five colluders sign
    anything and give the server all their shares; the server shows honest group A a survivor set with victim 0
    and group B one without it.  Whatever the split, one group cannot gather t signatures on its view, so the
    server never holds t shares of both b_0 and s_0 (2t = 22 > 16 + 5)."""
    n, victim, colluders = 16, 0, [1, 2, 3, 4, 5]
    fed = Federation(n, colluders=5, dropouts=1)
    assert fed.t == 11 and fed.server.cfg.degree == 0
    fed.advertise()
    fed.share()
    fed.upload()
    honest = [u for u in range(n) if u != victim and u not in colluders]
    group_a, group_b = honest[:a_size], honest[a_size:]
    view_a, view_b = list(range(n)), [u for u in range(n) if u != victim]
    cfg = fed.server.cfg
    from secprune.secagg.crypto import survivors_message

    sig_a = {u: _signature(fed.clients[u].sign_survivors(_survivors_msg(fed, u, view_a)))
             for u in [victim, *group_a]}
    sig_b = {u: _signature(fed.clients[u].sign_survivors(_survivors_msg(fed, u, view_b))) for u in group_b}
    for c in colluders:  # colluders sign both views
        sig_a[c] = fed.ids[c].sign(survivors_message(view_a, session=cfg.digest, epoch=0))
        sig_b[c] = fed.ids[c].sign(survivors_message(view_b, session=cfg.digest, epoch=0))
    b_shares = len(colluders)  # the colluders' shares of b_0 and of s_0 (they hold both)
    s_shares = len(colluders)
    for u in [victim, *group_a]:
        try:
            fed.clients[u].unmask(_unmask_msg(fed, u, sorted(sig_a.items())))
            b_shares += 1
        except SecAggAbortError as exc:
            assert f"only {len(sig_a)} of this client's share holders signed" in str(exc)
    for u in group_b:
        try:
            fed.clients[u].unmask(_unmask_msg(fed, u, sorted(sig_b.items())))
            s_shares += 1
        except SecAggAbortError as exc:
            assert f"only {len(sig_b)} of this client's share holders signed" in str(exc)
    assert min(b_shares, s_shares) < fed.t  # never both: x_0 stays masked
    for split in range(len(honest) + 1):  # and no other split does better
        assert min(split + 1 + 5, len(honest) - split + 5) < 11


def test_sparse_parameters_hold_even_with_the_colluders_placed_next_to_the_victim(monkeypatch):
    """64 clients, 3 colluders stated: degree 14, t = 12.  The ring is forced so all three colluders neighbour
    victim 0 (the worst placement, which the parameters allow for): the split view still gives at most t - 1 of
    one kind, and a faked gap beside the victim leaves it fewer than t live holders."""
    import secprune.secagg.graph as graph

    th = threat(64, colluders=3, dropouts=3)
    degree, t = pairwise_parameters(n_clients=64, threat=th)
    assert (degree, t) == (14, 12)
    monkeypatch.setattr(graph, "ring_order", lambda members, seed: sorted(members))  # 0's neighbours: 1..7, 57..63
    colluders = [1, 2, 3]
    holders = 1 + degree
    honest_neighbours = degree - len(colluders)
    best = max(min(a + 1 + 3, honest_neighbours - a + 3) for a in range(honest_neighbours + 1))
    assert best < t  # the split view
    assert 1 + degree // 2 + len(colluders) < t  # the cut: the victim beside a gap of 7 "dropped" clients
    fed = Federation(64, colluders=3, dropouts=3, degree=14)
    fed.advertise()
    assert fed.server.graph[0] == frozenset([*range(1, 8), *range(57, 64)]) and holders == 15


def test_a_client_refuses_a_session_below_its_own_threat():
    """Each client holds its own threat: a server that assumed fewer colluders (a lower t) is refused."""
    fed = Federation(16, colluders=0)  # the server's view: no colluders, t = 9, 3 contributors
    cautious = PairwiseClient(0, identity=fed.ids[0], directory=fed.directory, threat=threat(16))  # 5 colluders
    with pytest.raises(ProtocolError, match="client 0 .*refused: .*at least 3 contributors per sum, below this "
                                            "client's 8"):
        cautious.join(fed.server.session_messages()[0])
    lenient = PairwiseServer(directory=fed.directory, bits=5, max_value=1, threshold=9, degree=None,
                             min_contributors=8, epochs=[(("m", 8),)], threat=threat(16, colluders=0,
                                                                                     min_contributors=8))
    with pytest.raises(ProtocolError, match="client 0 .*refused: .*threshold 9 on the complete graph of 16 clients "
                                            "is below the safe level 11 for 5 colluding"):
        cautious.join(lenient.session_messages()[0])
    server = PairwiseServer(directory=fed.directory, bits=5, max_value=1, threshold=11, degree=None,
                            min_contributors=8, epochs=[(("m", 8),)], threat=threat(16))
    cautious.join(server.session_messages()[0])  # the default parameters satisfy it
    assert np.array_equal(cautious.cfg.epochs, server.cfg.epochs)
