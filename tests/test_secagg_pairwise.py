"""Backend "pairwise" (SecAgg / SecAgg+): exactness, sessions, streaming, dropouts, uniformity, wire size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.stats import chisquare

from secprune.secagg import make_summer
from secprune.secagg.errors import SecAggAbortError
from secprune.secagg.messages import HEADER, MsgType
from secprune.secagg.pairwise import PairwiseSession, PairwiseSum
from secprune.secagg.pairwise_client import CHUNK_HEAD
from secprune.secagg.ring import unpack


def _vectors(rng, n, length, max_value=1):
    return [rng.integers(0, max_value + 1, length).astype(np.uint8 if max_value < 256 else np.int64)
            for _ in range(n)]


class RecordingSession(PairwiseSession):
    def _send(self, sender, receiver, message):
        self.summer.wire.append((sender, receiver, message))
        return super()._send(sender, receiver, message)


class RecordingSum(PairwiseSum):
    """PairwiseSum whose sessions keep every message they send, to inspect the wire."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.wire: list[tuple[int, int, bytes]] = []

    def _session(self, key, epochs):
        return RecordingSession(self, key, epochs)


def _sent(summer, mtype, sender=None):
    return [m for s, _, m in summer.wire if m[3] == mtype and (sender is None or s == sender)]


@pytest.mark.parametrize("n, length, opts", [
    (3, 1000, {"colluders": 0}), (5, 300, {}), (7, 257, {"neighbours": 4, "colluders": 0}),
    (12, 999, {"colluders": 0}), (16, 301, {}),
    (10, 100, {"neighbours": 4, "colluders": 0, "cipher": "chacha20", "aead": "chacha20-poly1305"}),
    (6, 1000, {"chunk_entries": 64}),
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
    vectors[0][:3] = 1000
    summer = make_summer("pairwise", n_clients=5, max_value=1000, bits=20)
    np.testing.assert_array_equal(summer.sum("w", vectors), np.sum(vectors, axis=0))
    assert summer.bits == 20


def test_one_session_sums_a_whole_model_in_chunks():
    n, rng = 5, np.random.default_rng(2)
    lengths = {"q": 300, "k": 0, "up": 1000, "down": 64}
    masks = {(i, name): rng.integers(0, 2, length).astype(np.bool_)
             for i in range(n) for name, length in lengths.items()}
    reads = []

    def vector(i, name):
        reads.append((i, name))
        return masks[(i, name)]

    summer = RecordingSum(n_clients=n, chunk_entries=128)
    out = summer.sum_many("model", lengths, vector)
    for name in lengths:
        np.testing.assert_array_equal(out[name], np.sum([masks[(i, name)] for i in range(n)], axis=0))
    assert sorted(reads) == sorted(masks)  # each client read each of its matrices exactly once
    assert len(_sent(summer, MsgType.ADVERTISE)) == n  # one key agreement for the four matrices
    chunks = _sent(summer, MsgType.MASKED, sender=0)
    assert len(chunks) == 3 + 1 + 8 + 1  # 300 = 3 chunks, the empty matrix 1, 1000 = 8, 64 = 1
    assert summer.stats()["rounds"] == 1 and summer.stats()["entries"] == sum(lengths.values())


def test_multi_epoch_session_sums_each_epoch_with_one_setup():
    n, rng = 6, np.random.default_rng(3)
    epochs = [("layers.0", {"l0.a": 50, "l0.b": 20}), ("layers.1", {"l1.a": 70}), ("layers.2", {"l2.c": 5})]
    summer = RecordingSum(n_clients=n, threshold=4, colluders=0,
                          dropouts=lambda key: {"upload": [5]} if key == "layers.1" else None)
    session = summer.open_session("model", epochs)
    for e, (_, lengths) in enumerate(epochs):
        data = {(i, name): rng.integers(0, 2, m).astype(np.uint8) for i in range(n) for name, m in lengths.items()}
        out = session.sum_epoch(e, lambda i, name, data=data: data[(i, name)])
        alive = range(5) if e >= 1 else range(6)  # client 5 drops in epoch 1 and stays gone
        for name in lengths:
            np.testing.assert_array_equal(out[name], np.sum([data[(i, name)] for i in alive], axis=0))
    assert len(_sent(summer, MsgType.ADVERTISE)) == n and len(_sent(summer, MsgType.SURVIVORS_SIGNATURE)) == 6 + 5 + 5
    with pytest.raises(ValueError, match="out of order"):
        session.sum_epoch(1, lambda i, name: np.zeros(70, np.uint8))


def test_fresh_masks_every_session():
    """Two sessions mask with independent keys: the difference of two uploads is not the difference of the
    inputs (with one mask reused it would be, exactly), and it is uniform on the ring."""
    rng = np.random.default_rng(0)
    first, second = _vectors(rng, 3, 4000), _vectors(rng, 3, 4000)
    summer = RecordingSum(n_clients=3, colluders=0)
    summer.sum("a", first)
    summer.sum("a", second)
    uploads = _sent(summer, MsgType.MASKED, sender=0)
    start = HEADER.size + CHUNK_HEAD.size
    y = [unpack(m[start:-16], summer.bits, 4000).astype(np.int64) for m in uploads]
    diff = (y[0] - y[1]) % 2**summer.bits
    assert not np.array_equal(diff, (first[0].astype(np.int64) - second[0]) % 2**summer.bits)
    assert chisquare(np.bincount(diff, minlength=2**summer.bits)).pvalue > 1e-4
    assert set(summer.stats()["per_round"]) == {"a", "a#2"}


@pytest.mark.parametrize("schedule", [
    {"upload": [1, 4]},  # dropped after sharing keys, before the masked upload
    {"consistency": [0, 5]},  # uploaded, then silent in the consistency check
    {"unmask": [0, 5]},  # dropped after signing the survivor set, before unmasking
    {"advertise": [2], "share": [3]},
    {"share": [1], "upload": [2]},
    {"consistency": [3], "unmask": [6]},
])
@pytest.mark.parametrize("neighbours", [None, 6])
def test_dropouts_recover_exact_survivor_sum(schedule, neighbours):
    n = 9
    vectors = _vectors(np.random.default_rng(7), n, 500)
    threshold = 6 if neighbours is None else 5  # holders: 9 (complete) or 7 (degree 6): 3 or 2 dropouts tolerated
    summer = make_summer("pairwise", n_clients=n, neighbours=neighbours, threshold=threshold, colluders=0,
                         dropouts=schedule)
    out = summer.sum("layer", vectors)
    before_upload = {i for stage in ("advertise", "share", "upload") for i in schedule.get(stage, ())}
    survivors = sorted(set(range(n)) - before_upload)
    assert summer.last_survivors == survivors  # after-upload dropouts are counted
    np.testing.assert_array_equal(out, np.sum([vectors[i] for i in survivors], axis=0, dtype=np.int64))


@pytest.mark.parametrize("schedule, stage", [
    ({"upload": [0, 1, 2]}, "masked input collection"),
    ({"consistency": [0, 1, 2]}, "consistency check"),
    ({"unmask": [0, 1, 2]}, "unmasking"),
    ({"advertise": [0, 1], "share": [2]}, "key sharing"),
    ({"advertise": [0, 1, 2]}, "key advertisement"),
])
def test_too_many_dropouts_abort_cleanly(schedule, stage):
    summer = make_summer("pairwise", n_clients=6, threshold=4, colluders=0, dropouts=schedule)
    with pytest.raises(SecAggAbortError, match=f"aborted at {stage}.*threshold t=4"):
        summer.sum("layer", _vectors(np.random.default_rng(0), 6, 10))


def test_sparse_graph_aborts_when_a_neighbourhood_is_lost(monkeypatch):
    import secprune.secagg.graph as graph

    n, k = 10, 4
    monkeypatch.setattr(graph, "ring_order", lambda members, seed: sorted(members))  # the ring 0, 1, ..., 9
    schedule = {"unmask": [1, 2]}  # of client 0's holders 0, 1, 2, 8, 9 three remain, t = 4
    summer = PairwiseSum(n_clients=n, neighbours=k, threshold=4, colluders=0, dropouts=schedule)
    with pytest.raises(SecAggAbortError, match="client 0's self-mask seed arrived, fewer than the threshold"):
        summer.sum("k", _vectors(np.random.default_rng(0), n, 20))


@pytest.mark.parametrize("bad, match", [
    ([np.ones(10, np.uint8)] * 2 + [np.ones(11, np.uint8)], "expected a flat vector of 10"),
    ([np.ones(10, np.float32)] * 3, "dtype float32"),
    ([np.ones(10, np.uint8)] * 2 + [np.full(10, 2, np.uint8)], r"\[0, 1\]"),
    ([np.ones(10, np.int8)] * 2 + [-np.ones(10, np.int8)], r"\[0, 1\]"),
    ([np.ones((2, 5), np.uint8)] * 3, "flat vector"),
    ([np.ones(10, np.uint8)] * 2, "expected 3 client vectors"),
])
def test_bad_vectors_rejected_before_anything_is_sent(bad, match):
    summer = make_summer("pairwise", n_clients=3, colluders=0)
    with pytest.raises(ValueError, match=match):
        summer.sum("layer", bad)
    assert summer.stats()["total_bytes"] == 0


@pytest.mark.parametrize("value, dtype, match", [(3, np.uint8, r"client 1: m: entries must lie in \[0, 1\]"),
                                                 (1, np.float32, "client 1: m: expected an integer")])
def test_client_checks_its_own_input_in_a_lazy_session(value, dtype, match):
    summer = make_summer("pairwise", n_clients=3, colluders=0)
    with pytest.raises(ValueError, match=match):
        summer.sum_many("s", {"m": 8},
                        lambda i, name: np.full(8, value, dtype) if i == 1 else np.ones(8, np.uint8))


@pytest.mark.parametrize("neighbours", [None, 4])
@pytest.mark.parametrize("fill", [0, 1])
def test_single_masked_upload_is_uniform_on_the_ring(neighbours, fill):
    n, length = 6, 40_000  # b = 3: 8 bins of 5000 expected counts
    summer = RecordingSum(n_clients=n, neighbours=neighbours, colluders=0)
    vectors = [np.full(length, fill, np.uint8)] + _vectors(np.random.default_rng(0), n - 1, length)
    summer.sum("layer", vectors)
    (upload,) = _sent(summer, MsgType.MASKED, sender=0)
    start = HEADER.size + CHUNK_HEAD.size
    values = unpack(upload[start:-16], summer.bits, length)
    assert chisquare(np.bincount(values, minlength=2**summer.bits)).pvalue > 1e-4
    assert chisquare(np.bincount(vectors[0], minlength=8)).pvalue < 1e-4  # the test detects plaintext


def test_upload_costs_b_bits_per_entry():
    n, length = 64, 50_000
    summer = RecordingSum(n_clients=n, neighbours=8, colluders=0, dropout_budget=2)
    assert summer.bits == 7
    summer.sum("layer", _vectors(np.random.default_rng(0), n, length))
    uploads = _sent(summer, MsgType.MASKED)
    assert len(uploads) == n
    assert all(abs(8 * len(m) / length - 7) <= 0.1 for m in uploads)
    stats = summer.stats()
    assert stats["client_sent_bits_per_entry"] <= 1.1 * 7
    assert stats["plaintext_packed_bytes"] == n * (length // 8)
    assert stats["sent"]["client0"] == stats["per_round"]["layer"]["sent"]["client0"]
    assert stats["received"]["server"] == sum(v for k, v in stats["sent"].items() if k.startswith("client"))


def test_streaming_client_memory_does_not_grow_with_the_model():
    """Peak memory of one client's upload is O(chunk): the same for a 4x longer lazily read vector."""
    from secprune.secagg.identity import IdentityKey, KeyDirectory
    from secprune.secagg.pairwise import run_setup
    from secprune.secagg.pairwise_client import PairwiseClient
    from secprune.secagg.pairwise_server import PairwiseServer
    from secprune.secagg.params import threat

    def peak(length):
        ids = {i: IdentityKey.generate() for i in range(3)}
        directory = KeyDirectory({i: k.public for i, k in ids.items()})
        rule = threat(3, colluders=0)
        server = PairwiseServer(directory=directory, bits=2, max_value=1, threshold=3, degree=None, min_contributors=3,
                                epochs=[(("m", length),)], threat=rule, chunk_entries=1 << 15)
        clients = [PairwiseClient(i, identity=ids[i], directory=directory, threat=rule) for i in range(3)]
        run_setup(server, clients)
        lazy = np.broadcast_to(np.uint8(1), (length,))  # a view: the client reads slices of it
        tracemalloc.start()
        total = 0
        for msg in clients[0].upload(0, lambda name: lazy):
            total += len(msg)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top, total

    small, small_bytes = peak(1 << 20)
    large, large_bytes = peak(1 << 22)
    assert large_bytes > 3.9 * small_bytes  # four times the data went out ...
    assert large < 1.25 * small + (1 << 16) and large < 1 << 20  # ... with the same, chunk-sized, peak
