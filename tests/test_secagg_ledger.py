"""One input, one sum: every differencing route (a second epoch, session, HE round, name or run) is refused by the
client's ledger, and the reason it is spent at upload, not at unmasking, is shown by running the attack."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import numpy as np
import pytest

from secprune.secagg import make_summer
from secprune.secagg.errors import ProtocolError
from secprune.secagg.ledger import Ledger, content_digest
from secprune.secagg.messages import SERVER, MsgType, encode
from secprune.secagg.session import check_name

from .test_secagg_attacks import Federation


def test_content_digest_depends_on_the_values_only():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 2, 200_001).astype(np.uint8)  # spans several hashing blocks
    want = content_digest(v)
    for same in (v.astype(np.bool_), v.astype(np.int64), v.astype(">u2"), np.asfortranarray(v), v[::-1][::-1]):
        assert content_digest(same) == want
    w = v.copy()
    w[123_456] ^= 1
    assert content_digest(w) != want and content_digest(v[:-1]) != want
    assert content_digest(np.zeros(50, np.uint8)) is None  # a placeholder: nothing of a client's data
    assert content_digest(np.zeros(0, np.uint8)) is None
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        content_digest(np.array([0, 2]), max_value=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        content_digest(np.array([0, -1]), max_value=1)


def test_the_ledger_persists_owner_only_and_refuses_to_start_afresh(tmp_path):
    path = tmp_path / "state" / "ledger.json"
    ledger = Ledger(path)
    digest = content_digest(np.ones(10, np.uint8))
    ledger.spend([("a", digest)], who="client 0")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert digest.hex() not in path.read_text()  # keyed entries: a stray digest cannot be looked up
    again = Ledger(path)
    with pytest.raises(ProtocolError, match="client 0: the input b was already released"):
        again.spend([("b", digest)], who="client 0")
    with pytest.raises(ProtocolError, match="asked for twice"):  # twice in one request: none recorded
        again.spend([("c", content_digest(np.arange(3))), ("d", content_digest(np.arange(3)))], who="client 0")
    assert not Ledger(path).spent(content_digest(np.arange(3)))
    path.write_text("{not json")
    with pytest.raises(ProtocolError, match="unreadable .*refusing to release inputs"):
        Ledger(path)


def test_an_input_is_refused_in_a_second_session_under_any_name():
    """The same vectors summed again, in a new session of the same summer, under the same or another name:
    every client refuses before its first byte leaves (nothing of the second session is unmasked)."""
    rng = np.random.default_rng(1)
    vectors = [rng.integers(0, 2, 300).astype(np.uint8) for _ in range(4)]
    summer = make_summer("pairwise", n_clients=4, colluders=0)
    summer.sum("layers.0.q", vectors)
    before = summer.stats()["sent"].get("client0", 0)
    for name in ("layers.0.q", "layers.0.q_again", "alias.layers.0.q"):
        with pytest.raises(ProtocolError, match="client 0: the input .* was already released"):
            summer.sum(name, vectors)
    # a fresh input goes through, and the refused sessions sent no masked byte
    out = summer.sum("layers.1.q", [1 - v for v in vectors])
    np.testing.assert_array_equal(out, np.sum([1 - v for v in vectors], axis=0))
    assert summer.stats()["sent"]["client0"] > before
    zeros = [np.zeros(300, np.uint8)] * 4  # placeholders may repeat (FedSpaLLM's unsampled layers)
    summer.sum("z1", zeros)
    summer.sum("z2", zeros)


def test_a_layout_naming_an_input_twice_or_not_canonically_is_refused_by_every_client():
    fed = Federation(4, threshold=3)
    cfg = fed.server.cfg
    cases = [(((("m", 8),), (("m", 8),)), "names m twice"),  # two epochs, one input
             (((("m", 8), ("m", 8)),), "names m twice")]
    cases += [((((name, 8),),), "no '/'") for name in ("./m", "../mask/m", "m/", "a..b")]
    for epochs, match in cases:
        bad = replace(cfg, epochs=epochs)
        msg = encode(MsgType.SESSION, round_id=bad.session_id, sender=SERVER, receiver=0, payload=bad.encode())
        with pytest.raises(ProtocolError, match=f"client 0 .*refused: .*{match}"):
            fed.clients[0].join(msg)  # a refused SESSION leaves the client as it was
    for good in ("layers.0.self_attn.q_proj", "model", "layers.12.mlp.experts.gate-up"):
        assert check_name(good) == good
    for bad_name in ("", ".", "..", "a/b", "./a", "a/../b", "a b", "a\x00b", "x" * 256):
        with pytest.raises(ValueError, match="matrix name"):
            check_name(bad_name)


def test_spent_at_upload_not_at_unmask_defeats_the_withheld_unmask_attack():
    """Why the ledger spends an input when it is uploaded.  Session A (7 clients, complete graph, t = 4): all
    upload, the server asks only clients 3..6 to unmask and completes sum(all) with their shares; clients 0, 1
    were never asked.  Had they been free to upload again, session B over {0, 1, 2'} gives sum_B - sum_A =
    x_2' - (x_3 + x_4 + x_5 + x_6): a signed combination that reveals x_2' wherever it equals 1.  They refuse."""
    a = Federation(7, threshold=4)
    a.advertise()
    a.share()
    a.upload()
    requests = {i: r for i, r in a.survivor_requests.items()}
    a.consistency(requests)
    asked = {i: a.unmask_requests[i] for i in (3, 4, 5, 6)}  # the server withholds the requests of 0, 1, 2
    for i, req in asked.items():
        a.server.receive_unmask_response(a.clients[i].unmask(req))
    np.testing.assert_array_equal(a.server.finish()["m"], a.expected())  # complete, without clients 0, 1, 2
    assert a.clients[0]._phase == "signed"  # client 0 never answered an unmask request
    # session B: the same clients (their ledgers), the same inputs
    b = Federation(7, threshold=4)
    for i in range(7):
        b.clients[i].ledger = a.clients[i].ledger
    b.advertise()
    b.share()
    for i in (0, 1):
        with pytest.raises(ProtocolError, match=f"client {i}: the input m was already released"):
            b.clients[i].upload(0, lambda name, i=i: a.vectors[(0, i)][name])
    # the leak they prevent, computed from the plaintexts: where the combination is 1, client 2's entry is 1
    combo = a.vectors[(0, 2)]["m"].astype(int) - sum(a.vectors[(0, i)]["m"].astype(int) for i in (3, 4, 5, 6))
    assert (a.vectors[(0, 2)]["m"][combo == 1] == 1).all() and (combo == 1).any()


def test_he_refuses_the_same_input_under_a_new_round_or_name():
    rng = np.random.default_rng(2)
    vectors = [rng.integers(0, 2, 64).astype(np.uint8) for _ in range(3)]
    summer = make_summer("he", n_clients=3, colluders=0)
    summer.sum("layers.0.q", vectors)
    for name in ("layers.0.q", "layers.0.k"):  # new round ids every time
        with pytest.raises(ProtocolError, match="client 0: the input .* was already released"):
            summer.sum(name, vectors)
    with pytest.raises(ValueError, match="matrix name"):
        summer._clients[1].encrypt(None, vectors[1], name="../mask/layers.0.q")
