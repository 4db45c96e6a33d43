"""Ring packing, PRG, Shamir wrapper, neighbour graphs and message headers of secprune.secagg."""

from __future__ import annotations

import os

import numpy as np
import pytest

from secprune.secagg import shamir
from secprune.secagg.errors import ProtocolError
from secprune.secagg.graph import harary, ring_order
from secprune.secagg.messages import SERVER, MsgType, ReplayGuard, decode, encode
from secprune.secagg.prg import MaskPRG
from secprune.secagg.ring import pack, packed_size, ring_bits, ring_dtype, unpack


@pytest.mark.parametrize("n_clients, max_value, bits", [(1, 1, 1), (2, 1, 2), (3, 1, 2), (64, 1, 7),
                                                        (127, 1, 7), (128, 1, 8), (8, 255, 11)])
def test_ring_bits_is_ceil_log2_of_sum_plus_one(n_clients, max_value, bits):
    assert ring_bits(n_clients=n_clients, max_value=max_value) == bits


@pytest.mark.parametrize("bits", range(1, 65))
def test_pack_roundtrip_uses_exactly_b_bits_per_entry(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 333):
        values = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(ring_dtype(bits))
        data = pack(values, bits)
        assert len(data) == packed_size(n, bits) == (n * bits + 7) // 8
        np.testing.assert_array_equal(unpack(data, bits, n), values)


@pytest.mark.parametrize("bits", [3, 4, 5, 7, 12])
def test_pack_lays_entry_k_at_bits_b_k_little_endian(bits):
    """The wire layout against its definition, bit by bit (the 4-bit fast path included)."""
    rng = np.random.default_rng(bits + 100)
    for n in (1, 2, 3, 9, 101):
        values = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(ring_dtype(bits))
        want = np.zeros(packed_size(n, bits), np.uint8)
        for k, x in enumerate(values):
            for j in range(bits):
                pos = bits * k + j
                want[pos // 8] |= ((int(x) >> j) & 1) << (pos % 8)
        assert pack(values, bits) == want.tobytes()


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="data: expected 7 bytes"):
        unpack(b"\0" * 6, 7, 8)


@pytest.mark.parametrize("cipher", ["aes-ctr", "chacha20"])
def test_prg_is_deterministic_and_chunk_independent(cipher):
    key = os.urandom(32)
    big, small = MaskPRG(cipher=cipher), MaskPRG(cipher=cipher, chunk_bytes=192)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(big.expand(key, 1001, dtype), small.expand(key, 1001, dtype))
    acc = np.arange(500, dtype=np.uint16)
    big.add(acc, key)
    big.sub(acc, key)
    np.testing.assert_array_equal(acc, np.arange(500, dtype=np.uint16))
    assert not np.array_equal(big.expand(key, 64, np.uint8), big.expand(os.urandom(32), 64, np.uint8))


@pytest.mark.parametrize("cipher", ["aes-ctr", "chacha20"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint64])
def test_prg_offsets_address_one_stream(cipher, dtype):
    key = os.urandom(32)
    full = MaskPRG(cipher=cipher).expand(key, 3000, dtype)
    small = MaskPRG(cipher=cipher, chunk_bytes=128)
    for offset in (0, 1, 7, 63, 64, 100, 1001):
        np.testing.assert_array_equal(small.expand(key, 500, dtype, offset=offset), full[offset:offset + 500])
    acc = np.zeros(3000, dtype)
    for start in range(0, 3000, 700):  # chunk by chunk, as a streaming client masks its upload
        small.add(acc[start:start + 700], key, offset=start)
    np.testing.assert_array_equal(acc, full)


def test_prg_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cipher"):
        MaskPRG(cipher="rc4")
    with pytest.raises(ValueError, match="key: expected 32 bytes"):
        MaskPRG().expand(b"short", 4, np.uint8)


def _lagrange_reference(points, p):
    """f(0) by textbook Lagrange interpolation with Python integers (independent of the vectorised code)."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num, den = num * xm % p, den * (xm - xj) % p
        total = (total + yj * num * pow(den, p - 2, p)) % p
    return total


def test_shamir_threshold_recovers_any_t_shares_and_matches_textbook_interpolation():
    secrets = [os.urandom(16) for _ in range(6)]
    xs = [1, 2, 5, 9, 40, 201]
    shares = shamir.split(secrets, threshold=4, xs=xs)
    assert shares.shape == (6, 6, shamir.LIMBS) and (shares < shamir.P).all()
    for pick in ([0, 1, 2, 3], [5, 3, 1, 0], [2, 3, 4, 5]):
        got = shamir.combine(xs=[xs[i] for i in pick], shares=shares[pick])
        assert [bytes(r) for r in got] == secrets
    limbs = shamir._to_limbs(np.frombuffer(secrets[0], np.uint8).reshape(1, 16))[0]
    for limb in range(shamir.LIMBS):  # every limb is an independent polynomial evaluated at the xs
        pts = [(xs[i], int(shares[i, 0, limb])) for i in (0, 2, 4, 5)]
        assert _lagrange_reference(pts, shamir.P) == int(limbs[limb])
    assert int.from_bytes(secrets[0], "little") == sum(int(v) << (30 * i) for i, v in enumerate(limbs))


def test_shamir_below_threshold_reveals_nothing_and_bad_input_is_refused():
    secret = [bytes(16)]  # all-zero secret: t-1 shares must still look uniform
    rows = np.stack([shamir.split(secret, threshold=3, xs=[1, 2, 3])[:2, 0] for _ in range(400)])
    values = rows.reshape(-1)
    assert 0.45 < (values < shamir.P // 2).mean() < 0.55  # uniform on GF(p), not clustered near 0
    shares = shamir.split([os.urandom(16)], threshold=3, xs=[1, 2, 3])
    with pytest.raises(ValueError):  # 2 shares of a 3-of-3 sharing give random limbs, not a 16-byte secret
        shamir.combine(xs=[1, 2], shares=shares[:2])
    with pytest.raises(ValueError, match="threshold"):
        shamir.split([os.urandom(16)], threshold=4, xs=[1, 2, 3])
    with pytest.raises(ValueError, match="xs"):
        shamir.split([os.urandom(16)], threshold=1, xs=[1, 1])
    with pytest.raises(ValueError, match="secrets"):
        shamir.split(np.zeros((2, 15), np.uint8), threshold=1, xs=[1])
    data = shamir.shares_to_bytes(shares[0])
    assert len(data) == shamir.SHARE_BYTES and np.array_equal(shamir.shares_from_bytes(data, 1), shares[0])


@pytest.mark.parametrize("members, k", [(list(range(10)), 4), (list(range(64)), 8), ([0, 3, 4, 7, 9, 12, 15], 4)])
def test_harary_graph_is_symmetric_and_regular(members, k):
    graph = harary(members, degree=k, seed=b"s")
    assert set(graph) == set(members)
    assert all(len(a) == k and u not in a and a <= set(members) for u, a in graph.items())
    assert all(u in graph[v] for u in members for v in graph[u])
    order = ring_order(members, b"s")  # neighbours are the k/2 nearest on either side of the ring
    pos = {u: i for i, u in enumerate(order)}
    n = len(members)
    assert all(min((pos[u] - pos[v]) % n, (pos[v] - pos[u]) % n) <= k // 2 for u in members for v in graph[u])


def test_ring_order_is_a_uniform_permutation_of_the_seed():
    """Every position is equally likely for a client over random seeds (chi-square), and one seed fixes it."""
    from scipy.stats import chisquare

    first = [ring_order(range(8), os.urandom(16)).index(0) for _ in range(4000)]
    assert chisquare(np.bincount(first, minlength=8)).pvalue > 1e-4
    assert ring_order(range(8), b"x") == ring_order(list(reversed(range(8))), b"x")


def test_harary_rejects_odd_or_oversized_degrees():
    with pytest.raises(ValueError, match="even degree"):
        harary(range(9), degree=3, seed=b"")
    with pytest.raises(ValueError, match="even degree"):
        harary(range(9), degree=8, seed=b"")


def test_header_checks_round_type_receiver_and_replay():
    msg = encode(MsgType.MASKED, round_id=5, sender=2, receiver=SERVER, payload=b"xyz")
    header, payload = decode(msg, expect=MsgType.MASKED, round_id=5, receiver=SERVER)
    assert (header.sender, payload) == (2, b"xyz")
    with pytest.raises(ProtocolError, match="round"):
        decode(msg, expect=MsgType.MASKED, round_id=6)
    with pytest.raises(ProtocolError, match="type"):
        decode(msg, expect=MsgType.SHARE, round_id=5)
    with pytest.raises(ProtocolError, match="addressed"):
        decode(msg, expect=MsgType.MASKED, round_id=5, receiver=3)
    with pytest.raises(ProtocolError, match="header"):
        decode(msg[:10], expect=MsgType.MASKED, round_id=5)
    guard = ReplayGuard()
    guard.check(header)
    guard.check(header)  # not yet processed: a forged first copy cannot lock out the genuine one
    guard.mark(header)
    with pytest.raises(ProtocolError, match="replayed"):
        guard.check(header)
