"""Backend "he" (TenSEAL BFV with a separate key holder): exact packed sums, trust split, wire size."""

from __future__ import annotations

import numpy as np
import pytest

from secprune.secagg import make_summer
from secprune.secagg.errors import ProtocolError
from secprune.secagg.he import (
    HEClient,
    HEConfig,
    HEServer,
    KeyHolder,
    batching_prime,
    decode_slots,
    encode_slots,
    slot_packing,
)
from secprune.secagg.messages import HEADER, SERVER, MsgType, decode, encode

pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def holder():
    return KeyHolder(poly_modulus_degree=4096, plain_modulus_bits=40)


def _parties(holder, *, n, length, round_id=3, max_value=1):
    _, pub = decode(holder.public_context(), expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
    cfg = HEConfig(round_id=round_id, n_clients=n, length=length, max_value=max_value,
                   plain_modulus=holder.plain_modulus, poly_modulus_degree=holder.poly_modulus_degree)
    clients = [HEClient(i, encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=i, payload=pub))
               for i in range(n)]
    return cfg, clients, HEServer(cfg, pub)


def test_batching_prime_and_packing():
    t = batching_prime(bits=40, poly_modulus_degree=4096)
    assert t < 2**40 and t % 8192 == 1
    assert slot_packing(n_clients=64, max_value=1, plain_modulus=t) == (65, 6)  # 65^6 < 2^40 < 65^7
    assert slot_packing(n_clients=8, max_value=1, plain_modulus=t) == (9, 12)
    with pytest.raises(ValueError, match="plain_modulus_bits"):
        slot_packing(n_clients=2, max_value=2**40, plain_modulus=t)


@pytest.mark.parametrize("length, per_slot", [(1, 6), (6, 6), (7, 6), (100, 1), (101, 13)])
def test_slot_encoding_roundtrip_and_additivity(length, per_slot):
    rng = np.random.default_rng(length)
    base = 9
    a, b = rng.integers(0, 5, length), rng.integers(0, 4, length)  # digit sums stay below the base
    sa, sb = encode_slots(a, base=base, per_slot=per_slot), encode_slots(b, base=base, per_slot=per_slot)
    np.testing.assert_array_equal(decode_slots(sa + sb, base=base, per_slot=per_slot, n=length), a + b)


@pytest.mark.parametrize("n, length, max_value", [
    (3, 1, 1), (4, 4096 * 12, 1), (5, 4096 * 10 + 1, 1), (64, 2000, 1), (3, 777, 1000), (2, 50, 2**19),
])
def test_he_sum_is_exact_including_packing_edges(n, length, max_value):
    rng = np.random.default_rng(n + length)
    dtype = np.uint8 if max_value == 1 else np.int64
    vectors = [rng.integers(0, max_value + 1, length).astype(dtype) for _ in range(n)]
    vectors[0][:] = max_value  # every digit of the first slots saturates at n * max_value = B - 1
    vectors[-1][:] = max_value
    if n > 2:
        for v in vectors[1:-1]:
            v[: length // 2] = max_value
    summer = make_summer("he", n_clients=n, max_value=max_value)
    out = summer.sum("layer", vectors)
    np.testing.assert_array_equal(out, np.sum(vectors, axis=0, dtype=np.int64))
    np.testing.assert_array_equal(summer.sum("again", vectors), out)


def test_server_cannot_decrypt_and_clients_get_no_secret_key(holder):
    cfg, clients, server = _parties(holder, n=2, length=10)
    assert not server._ctx.is_private() and not clients[0]._ctx.is_private()
    server.receive(clients[0].encrypt(cfg, np.ones(10, np.uint8)))
    with pytest.raises(ValueError, match="secret"):
        server._acc[0].decrypt()


def test_key_holder_is_a_separate_party_in_the_byte_log():
    summer = make_summer("he", n_clients=3)
    summer.sum("a", [np.ones(100, np.uint8)] * 3)
    stats = summer.stats()
    assert stats["sent"]["keyholder"] > 0 and stats["received"]["keyholder"] > 0
    assert set(stats["per_round"]["a"]["sent"]) == {"keyholder", "server", "client0", "client1", "client2"}


def test_he_wire_is_under_40_bits_per_entry():
    n = 64
    length = 4096 * 6 * 4  # four full ciphertexts per client
    summer = make_summer("he", n_clients=n)
    summer.sum("warm-up", [np.zeros(1, np.uint8)] * n)  # the public context is sent in the first round
    rng = np.random.default_rng(0)
    vectors = [rng.integers(0, 2, length).astype(np.uint8) for _ in range(n)]
    np.testing.assert_array_equal(summer.sum("layer", vectors), np.sum(vectors, axis=0))
    upload = summer.stats()["per_round"]["layer"]["sent"]["client0"]
    assert 8 * upload / length < 40


def test_he_rejects_replay_other_round_and_garbage(holder):
    cfg, clients, server = _parties(holder, n=2, length=100, round_id=5)
    msg = clients[0].encrypt(cfg, np.ones(100, np.uint8))
    server.receive(msg)
    with pytest.raises(ProtocolError, match="replayed"):
        server.receive(msg)
    other_cfg, other_clients, _ = _parties(holder, n=2, length=100, round_id=6)
    with pytest.raises(ProtocolError, match="round"):
        server.receive(other_clients[1].encrypt(other_cfg, np.ones(100, np.uint8)))
    bad = bytearray(clients[1].encrypt(cfg, np.ones(100, np.uint8)))
    bad[HEADER.size + 8 + 1 + 8 + 4 + 4: HEADER.size + 8 + 1 + 8 + 4 + 4 + 16] = b"\xff" * 16
    with pytest.raises(ProtocolError, match="not a valid BFV ciphertext"):
        server.receive(bytes(bad))
    wrong_len = HEConfig(round_id=5, n_clients=2, length=99, max_value=1, plain_modulus=holder.plain_modulus,
                         poly_modulus_degree=4096)
    with pytest.raises(ProtocolError, match="n=99"):
        server.receive(clients[1].encrypt(wrong_len, np.ones(99, np.uint8)))


def test_he_dropouts_and_bad_options():
    vectors = [np.ones(10, np.uint8)] * 4
    summer = make_summer("he", n_clients=4, dropouts={"upload": [2]})
    np.testing.assert_array_equal(summer.sum("a", vectors), np.full(10, 3))
    assert summer.last_survivors == [0, 1, 3]
    with pytest.raises(ValueError, match="poly_modulus_degree"):
        make_summer("he", n_clients=4, poly_modulus_degree=1000)
    with pytest.raises(ValueError, match="plain_modulus_bits"):
        make_summer("he", n_clients=4, plain_modulus_bits=70)
    with pytest.raises(ValueError, match="dropouts"):
        make_summer("he", n_clients=4, dropouts={"unmask": [1]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_summer("he", n_clients=4).sum("a", [np.full(10, 2, np.uint8)] * 4)


def test_key_holder_rejects_out_of_range_aggregate(holder):
    import tenseal as ts

    from secprune.secagg.he import _ciphertexts_payload
    from secprune.secagg.messages import KEY_HOLDER

    cfg, clients, server = _parties(holder, n=2, length=12)
    evil = ts.bfv_vector(clients[0]._ctx, [holder.plain_modulus - 1]).serialize()  # digits >= B
    msg = encode(MsgType.HE_CIPHERTEXTS, round_id=cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                 payload=_ciphertexts_payload(cfg, [evil]))
    with pytest.raises(ProtocolError, match="out of range"):
        holder.decrypt(cfg, msg)
