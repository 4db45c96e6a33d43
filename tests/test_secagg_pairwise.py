"""Backend "pairwise" (SecAgg / SecAgg+): exactness, dropouts, attacks, uniformity, wire size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from secprune.secagg import make_summer
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.graph import neighbour_graph
from secprune.secagg.messages import HEADER, MsgType, decode
from secprune.secagg.pairwise import PairwiseClient, PairwiseServer, PairwiseSum, RoundConfig
from secprune.secagg.ring import unpack


def _vectors(rng, n, length, max_value=1):
    return [rng.integers(0, max_value + 1, length).astype(np.uint8 if max_value < 256 else np.int64)
            for _ in range(n)]


class RecordingSum(PairwiseSum):
    """PairwiseSum that keeps every message it sends, to inspect the wire."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.wire: list[tuple[int, int, bytes]] = []

    def _send(self, sender, receiver, message):
        self.wire.append((sender, receiver, message))
        return super()._send(sender, receiver, message)


@pytest.mark.parametrize("n, length, opts", [
    (1, 50, {}), (2, 33, {}), (3, 1000, {}), (7, 257, {"neighbours": 4}), (12, 999, {"neighbours": "log"}),
    (10, 100, {"neighbours": 3, "cipher": "chacha20", "aead": "chacha20-poly1305"}),
])
def test_sum_equals_plaintext_sum(n, length, opts):
    rng = np.random.default_rng(n * 1000 + length)
    summer = make_summer("pairwise", n_clients=n, seed=n, **opts)
    for key in ("layer0", "layer1"):
        vectors = _vectors(rng, n, length)
        out = summer.sum(key, vectors)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, np.sum(vectors, axis=0, dtype=np.int64))
    assert summer.last_survivors == list(range(n))


def test_sum_exact_for_wider_integers_and_wider_ring():
    rng = np.random.default_rng(1)
    vectors = _vectors(rng, 5, 400, max_value=1000)
    summer = make_summer("pairwise", n_clients=5, max_value=1000, bits=20)
    np.testing.assert_array_equal(summer.sum("w", vectors), np.sum(vectors, axis=0))
    assert summer.bits == 20


def test_fresh_masks_every_round():
    vector = [np.ones(2000, np.uint8)] * 3
    summer = RecordingSum(n_clients=3)
    summer.sum("a", vector)
    summer.sum("a", vector)
    uploads = [m for s, _, m in summer.wire if s == 0 and m[3] == MsgType.MASKED]
    assert len(uploads) == 2 and uploads[0][HEADER.size:] != uploads[1][HEADER.size:]
    assert set(summer.stats()["per_round"]) == {"a", "a#2"}


@pytest.mark.parametrize("schedule", [
    {"upload": [1, 4]},  # dropped after sharing keys, before the masked upload
    {"unmask": [0, 5]},  # dropped after the masked upload, before unmasking
    {"advertise": [2], "share": [3]},
    {"share": [1], "upload": [2], "unmask": [3]},
])
@pytest.mark.parametrize("neighbours", [None, 6])
def test_dropouts_recover_exact_survivor_sum(schedule, neighbours):
    n = 9
    rng = np.random.default_rng(7)
    vectors = _vectors(rng, n, 500)
    threshold = 5 if neighbours is None else 4  # holders: 9 (complete) or 7 (degree 6); 3 dropouts at most
    summer = make_summer("pairwise", n_clients=n, neighbours=neighbours, threshold=threshold,
                         dropouts=schedule)
    out = summer.sum("layer", vectors)
    before_upload = {i for stage in ("advertise", "share", "upload") for i in schedule.get(stage, ())}
    survivors = sorted(set(range(n)) - before_upload)
    assert summer.last_survivors == survivors  # after-upload dropouts are counted
    np.testing.assert_array_equal(out, np.sum([vectors[i] for i in survivors], axis=0, dtype=np.int64))


def test_per_round_dropout_schedule_callable():
    vectors = _vectors(np.random.default_rng(3), 5, 64)
    summer = make_summer("pairwise", n_clients=5,
                         dropouts=lambda key: {"upload": [4]} if key == "b" else None)
    np.testing.assert_array_equal(summer.sum("a", vectors), np.sum(vectors, axis=0))
    np.testing.assert_array_equal(summer.sum("b", vectors), np.sum(vectors[:4], axis=0))


@pytest.mark.parametrize("schedule, stage", [
    ({"upload": [0, 1, 2]}, "masked input collection"),
    ({"unmask": [0, 1, 2]}, "unmasking"),
    ({"advertise": [0, 1], "share": [2]}, "key sharing"),
])
def test_too_many_dropouts_abort_cleanly(schedule, stage):
    summer = make_summer("pairwise", n_clients=6, threshold=4, dropouts=schedule)
    with pytest.raises(SecAggAbortError, match=f"aborted at {stage}.*threshold t=4"):
        summer.sum("layer", _vectors(np.random.default_rng(0), 6, 10))


def test_sparse_graph_aborts_when_a_neighbourhood_is_lost(monkeypatch):
    import secprune.secagg.pairwise as pw

    n, k = 10, 4
    graph = neighbour_graph(n, degree=k, seed=0)
    schedule = {"unmask": sorted(graph[0])[:3]}  # 2 of client 0's 5 share holders remain, t = 4
    summer = PairwiseSum(n_clients=n, neighbours=k, threshold=4, dropouts=schedule)
    monkeypatch.setattr(pw, "neighbour_graph", lambda *a, **kw: graph)
    with pytest.raises(SecAggAbortError, match="client 0's self-mask seed arrived, fewer than the threshold"):
        summer.sum("k", _vectors(np.random.default_rng(0), n, 20))


def _round(n=4, length=32, round_id=11, **kw):
    cfg = RoundConfig(round_id=round_id, n_clients=n, length=length, bits=3, max_value=1, threshold=3, **kw)
    graph = neighbour_graph(n)
    clients = [PairwiseClient(i, cfg) for i in range(n)]
    server = PairwiseServer(cfg, graph)
    for c in clients:
        server.receive_advertisement(c.advertise())
    rosters = server.rosters()
    for c in clients:
        server.receive_share_bundle(c.share_keys(rosters[c.id]))
    return cfg, clients, server, server.close_shares()


def _finish(clients, server, forwarded, vectors):
    for i, blobs in forwarded.items():
        for blob in blobs:
            clients[i].receive_share(blob)
    for c in clients:
        server.receive_masked(c.masked_input(vectors[c.id]))
    requests = server.close_masked()
    for c in clients:
        server.receive_unmask_response(c.unmask(requests[c.id]))
    return server.finish()


def test_manual_round_is_exact():
    vectors = _vectors(np.random.default_rng(5), 4, 32)
    _, clients, server, forwarded = _round()
    np.testing.assert_array_equal(_finish(clients, server, forwarded, vectors), np.sum(vectors, axis=0))


@pytest.mark.parametrize("position", [HEADER.size + 3, -1, -20])
def test_tampered_share_ciphertext_is_rejected(position):
    _, clients, _, forwarded = _round()
    blob = bytearray(forwarded[1][0])
    blob[position] ^= 0x01
    with pytest.raises(ProtocolError, match="authentication failed"):
        clients[1].receive_share(bytes(blob))


def test_tampered_share_header_is_rejected():
    _, clients, _, forwarded = _round()
    blob = bytearray(forwarded[1][0])
    blob[16:20] = (2).to_bytes(4, "big")  # claim another receiver
    with pytest.raises(ProtocolError, match="addressed"):
        clients[1].receive_share(bytes(blob))
    blob = bytearray(forwarded[1][0])
    sender = int.from_bytes(blob[12:16], "big")
    blob[12:16] = ((sender + 1) % 4 if (sender + 1) % 4 != 1 else (sender + 2) % 4).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="authentication failed"):  # AD binds the sender id
        clients[1].receive_share(bytes(blob))


def test_replayed_share_is_rejected():
    _, clients, _, forwarded = _round()
    clients[2].receive_share(forwarded[2][0])
    with pytest.raises(ProtocolError, match="replayed"):
        clients[2].receive_share(forwarded[2][0])


def test_share_from_another_round_is_rejected():
    _, _, _, old = _round(round_id=1)
    _, clients, _, forwarded = _round(round_id=2)
    with pytest.raises(ProtocolError, match="round"):
        clients[1].receive_share(old[1][0])
    forged = bytearray(old[1][0])  # rewrite the header's round id: the AEAD (AD = header) rejects it
    forged[4:12] = (2).to_bytes(8, "big")
    with pytest.raises(ProtocolError, match="authentication failed"):
        clients[1].receive_share(bytes(forged))


def test_masked_upload_replay_and_other_round_rejected():
    vectors = _vectors(np.random.default_rng(5), 4, 32)
    _, old_clients, _, old_fw = _round(round_id=1)
    for i, blobs in old_fw.items():
        for blob in blobs:
            old_clients[i].receive_share(blob)
    old_upload = old_clients[0].masked_input(vectors[0])
    _, clients, server, forwarded = _round(round_id=2)
    for i, blobs in forwarded.items():
        for blob in blobs:
            clients[i].receive_share(blob)
    with pytest.raises(ProtocolError, match="round"):
        server.receive_masked(old_upload)
    upload = clients[0].masked_input(vectors[0])
    server.receive_masked(upload)
    with pytest.raises(ProtocolError, match="replayed"):
        server.receive_masked(upload)


def test_wrong_length_upload_rejected_by_server():
    cfg, clients, server, forwarded = _round(length=32)
    other = RoundConfig(round_id=cfg.round_id, n_clients=4, length=31, bits=3, max_value=1, threshold=3)
    intruder = PairwiseClient(0, other)
    intruder._stage = "receive"
    with pytest.raises(ProtocolError, match="expected 32 entries"):
        server.receive_masked(intruder.masked_input(np.zeros(31, np.uint8)))


@pytest.mark.parametrize("bad, match", [
    ([np.ones(10, np.uint8)] * 2 + [np.ones(11, np.uint8)], "expected a flat vector of 10"),
    ([np.ones(10, np.float32)] * 3, "dtype float32"),
    ([np.ones(10, np.uint8)] * 2 + [np.full(10, 2, np.uint8)], r"\[0, 1\]"),
    ([np.ones(10, np.int8)] * 2 + [-np.ones(10, np.int8)], r"\[0, 1\]"),
    ([np.ones((2, 5), np.uint8)] * 3, "flat vector"),
    ([np.ones(10, np.uint8)] * 2, "expected 3 client vectors"),
])
def test_bad_vectors_rejected_before_anything_is_sent(bad, match):
    summer = make_summer("pairwise", n_clients=3)
    with pytest.raises(ValueError, match=match):
        summer.sum("layer", bad)
    assert summer.stats()["total_bytes"] == 0


def test_client_rejects_non_binary_mask_itself():
    cfg, clients, _, forwarded = _round()
    for i, blobs in forwarded.items():
        for blob in blobs:
            clients[i].receive_share(blob)
    with pytest.raises(ValueError, match=r"client 0: entries must lie in \[0, 1\]"):
        clients[0].masked_input(np.full(32, 3, np.uint8))


@pytest.mark.parametrize("neighbours", [None, 2])
@pytest.mark.parametrize("fill", [0, 1])
def test_single_masked_upload_is_uniform_on_the_ring(neighbours, fill):
    n, length = 5, 40_000  # b = 3: 8 bins of 5000 expected counts
    summer = RecordingSum(n_clients=n, neighbours=neighbours)
    vectors = [np.full(length, fill, np.uint8)] + _vectors(np.random.default_rng(0), n - 1, length)
    summer.sum("layer", vectors)
    (upload,) = [m for s, _, m in summer.wire if s == 0 and m[3] == MsgType.MASKED]
    _, payload = decode(upload, expect=MsgType.MASKED, round_id=int.from_bytes(upload[4:12], "big"))
    values = unpack(payload[9:], summer.bits, length)
    counts = np.bincount(values, minlength=2**summer.bits)
    assert chisquare(counts).pvalue > 1e-4
    assert chisquare(np.bincount(vectors[0], minlength=8)).pvalue < 1e-4  # the test detects plaintext


def test_upload_costs_b_bits_per_entry():
    n, length = 64, 20_000
    summer = RecordingSum(n_clients=n, neighbours=8)
    assert summer.bits == 7
    summer.sum("layer", _vectors(np.random.default_rng(0), n, length))
    uploads = [m for s, _, m in summer.wire if m[3] == MsgType.MASKED]
    assert len(uploads) == n
    assert all(abs(8 * len(m) / length - 7) <= 0.7 for m in uploads)
    stats = summer.stats()
    assert stats["client_sent_bits_per_entry"] <= 1.1 * 7
    assert stats["plaintext_packed_bytes"] == n * (length // 8)
    assert stats["sent"]["client0"] == stats["per_round"]["layer"]["sent"]["client0"]
    assert stats["received"]["server"] == sum(v for k, v in stats["sent"].items() if k.startswith("client"))


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 1}, "threshold"), ({"threshold": 9}, "threshold"), ({"neighbours": -2}, "neighbours"),
    ({"cipher": "des"}, "cipher"), ({"aead": "none"}, "aead"), ({"bits": 2}, "bits"), ({"bits": 65}, "bits"),
    ({"dropouts": {"later": [1]}}, "dropouts"), ({"dropouts": {"upload": [9]}}, "dropouts"),
])
def test_bad_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        summer = make_summer("pairwise", n_clients=8, **kwargs)
        summer.sum("x", [np.zeros(4, np.uint8)] * 8)


def test_unmask_request_cannot_ask_for_both_shares():
    cfg, clients, server, forwarded = _round()
    for i, blobs in forwarded.items():
        for blob in blobs:
            clients[i].receive_share(blob)
    from secprune.secagg.messages import SERVER, encode

    body = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"".join(
        i.to_bytes(4, "big") for i in range(4))
    clients[0].masked_input(np.zeros(32, np.uint8))
    evil = encode(MsgType.UNMASK_REQUEST, round_id=cfg.round_id, sender=SERVER, receiver=0, payload=body)
    with pytest.raises(ProtocolError, match="both"):
        clients[0].unmask(evil)
