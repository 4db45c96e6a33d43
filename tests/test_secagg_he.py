"""Backend "he" (TenSEAL BFV, separate key holder): exact packed sums, wire size, and the active-server attacks."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secprune.secagg import make_summer
from secprune.secagg.crypto import public_bytes
from secprune.secagg.errors import ProtocolError, SecAggAbortError
from secprune.secagg.he import HEClient, HEConfig, HEServer, KeyHolder
from secprune.secagg.he_packing import batching_prime, decode_slots, encode_slots, is_prime, slot_packing, uniform_mod
from secprune.secagg.identity import IdentityKey, KeyDirectory
from secprune.secagg.ledger import Ledger
from secprune.secagg.messages import HEADER, KEY_HOLDER, SERVER, MsgType, decode, encode
from secprune.secagg.params import threat

pytest.importorskip("tenseal")


class Parties:
    """A key holder, a server and n clients for manual rounds."""

    def __init__(self, n, *, threshold=None):
        self.ids = {i: IdentityKey.generate() for i in (*range(n), KEY_HOLDER)}
        self.directory = KeyDirectory({i: k.public for i, k in self.ids.items()})
        self.threat = threat(n, colluders=0, dropouts=0)
        self.holder = KeyHolder(identity=self.ids[KEY_HOLDER], directory=self.directory, threshold=threshold,
                                threat=self.threat)
        self.context = self.holder.public_context()
        _, payload = decode(self.context, expect=MsgType.HE_CONTEXT, round_id=0, receiver=SERVER)
        self.clients = [HEClient(i, encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=i, payload=payload),
                                 identity=self.ids[i], directory=self.directory) for i in range(n)]
        self.server_sk = X25519PrivateKey.generate()
        self.n = n

    def round(self, length, round_id=3, max_value=1):
        cfg = HEConfig(round_id=round_id, n_clients=self.n, length=length, max_value=max_value,
                       plain_modulus=self.holder.plain_modulus, poly_modulus_degree=self.holder.poly_modulus_degree,
                       server_key=public_bytes(self.server_sk))
        return cfg, HEServer(cfg, self.context, directory=self.directory, server_key=self.server_sk,
                             min_contributors=self.threat.min_contributors)


@pytest.fixture(scope="module")
def shared_parties():
    return Parties(4)  # t = 3: the key holder decrypts sums of three or four signed uploads


@pytest.fixture
def parties(shared_parties):
    for client in shared_parties.clients:  # every test starts with unspent inputs
        client.ledger = Ledger()
    return shared_parties


def test_batching_prime_and_packing():
    t = batching_prime(bits=40, poly_modulus_degree=4096)
    assert t < 2**40 and t % 8192 == 1
    assert slot_packing(n_clients=64, max_value=1, plain_modulus=t) == (65, 6)  # 65^6 < 2^40 < 65^7
    assert slot_packing(n_clients=8, max_value=1, plain_modulus=t) == (9, 12)
    with pytest.raises(ValueError, match="plain_modulus_bits"):
        slot_packing(n_clients=2, max_value=2**40, plain_modulus=t)


def test_is_prime_against_a_sieve_and_known_pseudoprimes():
    limit = 200_000
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(limit**0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    assert [n for n in range(limit) if is_prime(n)] == np.flatnonzero(sieve).tolist()
    # strong pseudoprimes to bases 2..7, and to 2..31 (Jaeschke 1993; only 37 witnesses it): fewer bases fail
    assert not is_prime(3_215_031_751) and not is_prime(3_825_123_056_546_413_051)
    assert is_prime(2**61 - 1) and not is_prime(2**61 + 1)  # a Mersenne prime; 2^61+1 = 3 * ...
    with pytest.raises(ValueError, match="psi_12"):
        is_prime(318_665_857_834_031_151_167_461)  # the least strong pseudoprime to all twelve bases


# batching_prime as pycryptodome's isPrime found them (its value before our own test replaced it)
@pytest.mark.parametrize("bits, degree, prime", [
    (17, 4096, 114689),
    (17, 8192, 114689),
    (17, 16384, 65537),
    (20, 4096, 1032193),
    (20, 8192, 1032193),
    (20, 16384, 786433),
    (30, 4096, 1073692673),
    (30, 8192, 1073692673),
    (30, 16384, 1073643521),
    (40, 4096, 1099511480321),
    (40, 8192, 1099511480321),
    (40, 16384, 1099510054913),
    (50, 4096, 1125899906826241),
    (50, 8192, 1125899906826241),
    (50, 16384, 1125899904679937),
    (60, 4096, 1152921504606830593),
    (60, 8192, 1152921504606830593),
    (60, 16384, 1152921504606748673),
])
def test_batching_prime_equals_the_recorded_primes(bits, degree, prime):
    assert batching_prime(bits=bits, poly_modulus_degree=degree) == prime


@pytest.mark.parametrize("length, per_slot", [(1, 6), (6, 6), (7, 6), (100, 1), (101, 13)])
def test_slot_encoding_roundtrip_and_additivity(length, per_slot):
    rng = np.random.default_rng(length)
    base = 9
    a, b = rng.integers(0, 5, length), rng.integers(0, 4, length)  # digit sums stay below the base
    sa, sb = encode_slots(a, base=base, per_slot=per_slot), encode_slots(b, base=base, per_slot=per_slot)
    np.testing.assert_array_equal(decode_slots(sa + sb, base=base, per_slot=per_slot, n=length), a + b)


def test_uniform_masks_are_reproducible_and_uniform():
    t = batching_prime(bits=20, poly_modulus_degree=4096)
    a = uniform_mod(b"k" * 32, count=50_000, modulus=t)
    np.testing.assert_array_equal(a, uniform_mod(b"k" * 32, count=50_000, modulus=t))
    assert a.max() < t and 0.48 < (a < t // 2).mean() < 0.52
    assert not np.array_equal(a[:100], uniform_mod(b"j" * 32, count=100, modulus=t))


@pytest.mark.parametrize("n, length, max_value", [
    (3, 1, 1), (4, 4096 * 12, 1), (5, 4096 * 10 + 1, 1), (64, 2000, 1), (3, 777, 1000), (3, 50, 2**19),
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
    summer = make_summer("he", n_clients=n, max_value=max_value, colluders=0)
    out = summer.sum("layer", vectors)
    np.testing.assert_array_equal(out, np.sum(vectors, axis=0, dtype=np.int64))
    with pytest.raises(ProtocolError, match="client 0: the input again was already released"):
        summer.sum("again", vectors)  # one input, one sum: a new round id (and name) does not make it new


def test_server_cannot_decrypt_and_clients_get_no_secret_key(parties):
    cfg, server = parties.round(10)
    assert not server._ctx.is_private() and not parties.clients[0]._ctx.is_private()
    import tenseal as ts

    msg = parties.clients[0].encrypt(cfg, np.ones(10, np.uint8))
    server.receive(msg)
    ct = ts.bfv_vector_from(server._ctx, _ciphertext_part(msg)[32 + 8 + 1 + 8 + 4 + 4:])
    with pytest.raises(ValueError, match="secret"):
        ct.decrypt()


def test_key_holder_sees_only_masked_uploads():
    """The key holder decrypts one forwarded upload with its own secret key: the slots are uniform on Z_t,
    not the packed 0/1 vector (whose slots all lie below B^P = 65^6, 1/15 of Z_t)."""
    p = Parties(64)
    cfg, server = p.round(4096 * 6)
    msg = p.clients[0].encrypt(cfg, np.zeros(4096 * 6, np.uint8))
    import tenseal as ts

    ct = ts.bfv_vector_from(p.holder._ctx, _ciphertext_part(msg)[32 + 8 + 1 + 8 + 4 + 4:])
    slots = np.mod(np.asarray(ct.decrypt(), np.int64), p.holder.plain_modulus)
    assert not (slots == 0).all()  # the plaintext was all zeros
    assert 0.03 < (slots < 65**6).mean() < 0.12 and 0.45 < (slots < p.holder.plain_modulus // 2).mean() < 0.55


def test_key_holder_is_a_separate_party_in_the_byte_log():
    summer = make_summer("he", n_clients=3, colluders=0)
    summer.sum("a", [np.ones(100, np.uint8)] * 3)
    stats = summer.stats()
    assert stats["sent"]["keyholder"] > 0 and stats["received"]["keyholder"] > 0
    assert set(stats["per_round"]["a"]["sent"]) == {"keyholder", "server", "client0", "client1", "client2"}


@pytest.mark.parametrize("validate, bits", [(False, 40), (True, 80)])
def test_he_wire_bits_per_entry(validate, bits):
    """About 30 bits per entry for the ciphertexts; validation adds the 40-bit share of the input and a proof
    of about 4 sqrt(L) residues."""
    n = 64
    length = 4096 * 6 * 4  # four full ciphertexts per client
    summer = make_summer("he", n_clients=n, validate=validate)
    summer.sum("warm-up", [np.zeros(1, np.uint8)] * n)  # the public context is sent in the first round
    rng = np.random.default_rng(0)
    vectors = [rng.integers(0, 2, length).astype(np.uint8) for _ in range(n)]
    np.testing.assert_array_equal(summer.sum("layer", vectors), np.sum(vectors, axis=0))
    upload = summer.stats()["per_round"]["layer"]["sent"]["client0"]
    assert bits - 40 < 8 * upload / length < bits


# -- attacks ----------------------------------------------------------------------------------------------------

def _forward(cfg, message):
    return encode(MsgType.HE_FORWARD, round_id=cfg.round_id, sender=SERVER, receiver=KEY_HOLDER, payload=message)


def _decrypt_request(cfg, ids):
    return encode(MsgType.HE_DECRYPT, round_id=cfg.round_id, sender=SERVER, receiver=KEY_HOLDER,
                  payload=len(ids).to_bytes(4, "big") + b"".join(i.to_bytes(4, "big") for i in ids))


def test_key_holder_refuses_to_decrypt_a_single_upload_passed_off_as_the_aggregate():
    p = Parties(3)  # t = 3
    cfg, _ = p.round(50, round_id=11)
    victim = p.clients[0].encrypt(cfg, np.ones(50, np.uint8))
    p.holder.receive_upload(cfg, _forward(cfg, victim))
    with pytest.raises(SecAggAbortError, match="only 1 signed uploads in this round, fewer than t=3; refused"):
        p.holder.decrypt(cfg, _decrypt_request(cfg, [0]))
    with pytest.raises(ProtocolError, match=r"asked to decrypt the sum of clients \[0, 1\], but it accepted .*\[0\]"):
        p.holder.decrypt(cfg, _decrypt_request(cfg, [0, 1]))  # claims an upload it never forwarded
    with pytest.raises(ProtocolError, match=r"sum of clients \[0, 0, 0\], but it accepted .*\[0\]"):
        p.holder.decrypt(cfg, _decrypt_request(cfg, [0, 0, 0]))  # one upload listed t times
    with pytest.raises(ProtocolError, match="forwarded twice"):
        p.holder.receive_upload(cfg, _forward(cfg, victim))  # the same upload counted twice


def test_key_holder_refuses_unsigned_relabelled_or_other_round_uploads():
    p = Parties(3)
    cfg, _ = p.round(50, round_id=12)
    upload = p.clients[1].encrypt(cfg, np.ones(50, np.uint8))
    relabelled = bytearray(upload)
    relabelled[12:16] = (2).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="claiming to be from client 2 are not signed by its pinned key"):
        p.holder.receive_upload(cfg, _forward(cfg, bytes(relabelled)))
    forged = upload[:-64] + IdentityKey.generate().sign(b"anything")  # the server's own signature
    with pytest.raises(ProtocolError, match="not signed by its pinned key"):
        p.holder.receive_upload(cfg, _forward(cfg, forged))
    other, _ = p.round(50, round_id=13)
    with pytest.raises(ProtocolError, match="round"):
        p.holder.receive_upload(other, _forward(other, upload))


def test_key_holder_decrypts_each_round_once_and_uses_its_own_threshold():
    p = Parties(4, threshold=3)
    cfg, server = p.round(20, round_id=21)
    for c in p.clients[:3]:
        p.holder.receive_upload(cfg, server.receive(c.encrypt(cfg, np.ones(20, np.uint8))))
    result = p.holder.decrypt(cfg, server.decrypt_request())
    np.testing.assert_array_equal(server.result(result), np.full(20, 3))
    with pytest.raises(ProtocolError, match="already decrypted"):
        p.holder.decrypt(cfg, server.decrypt_request.__self__ and _decrypt_request(cfg, [0, 1, 2]))
    assert p.holder.threshold == 3  # not taken from any server message


def _ciphertext_part(message):
    from secprune.secagg.he import _split_upload

    return _split_upload(message[HEADER.size:-64], "test", 0)[0][0]


def _signed_upload(parties, cfg, sender, cts, ct_part=None):
    from secprune.secagg.he import Header, _signed_digest, _upload_payload

    base, per_slot = cfg.packing
    if ct_part is None:
        ct_part = (bytes(32) + base.to_bytes(8, "big") + bytes([per_slot]) + cfg.length.to_bytes(8, "big")
                   + len(cts).to_bytes(4, "big") + b"".join(len(c).to_bytes(4, "big") + c for c in cts))
    header = Header(MsgType.HE_CIPHERTEXTS, cfg.round_id, sender, SERVER).pack()
    parts = [ct_part, b"", b""]
    return header + _upload_payload(parts) + parties.ids[sender].sign(_signed_digest(header, parts))  # its own


def test_server_receive_is_atomic_and_names_the_sender_of_a_malformed_upload(parties):
    import tenseal as ts

    cfg, server = parties.round(4096 * 20 + 5)  # P = 20 entries per slot: two ciphertexts per upload
    assert len(cfg.slot_counts()) == 2
    first = ts.bfv_vector(parties.clients[1]._ctx, [0] * 4096).serialize()
    bad = _signed_upload(parties, cfg, 1, [first, b"\xff" * 64])
    with pytest.raises(ProtocolError, match="ciphertext 1 from client 1 is not a valid BFV ciphertext"):
        server.receive(bad)
    with pytest.raises(ProtocolError, match="ciphertext 1 from client 1 is not a valid BFV ciphertext"):
        parties.holder.receive_upload(cfg, _forward(cfg, bad))
    assert server.uploaded == [] and not parties.holder._rounds[cfg.round_id].added  # nothing half-added
    genuine = parties.clients[1].encrypt(cfg, np.ones(cfg.length, np.uint8))
    tampered = bytearray(genuine)
    tampered[-100] ^= 1
    with pytest.raises(ProtocolError, match="client 1 are not signed"):  # in transit: the signature breaks
        server.receive(bytes(tampered))
    server.receive(genuine)  # the genuine one is accepted
    assert server.uploaded == [1]


def test_wrong_slot_count_first_upload_is_rejected_and_honest_uploads_still_sum(parties):
    import tenseal as ts

    cfg, server = parties.round(4096 * 20 + 5, round_id=31)
    ctx = parties.clients[0]._ctx
    msg = _signed_upload(parties, cfg, 0, [ts.bfv_vector(ctx, [1] * 7).serialize(),
                                           ts.bfv_vector(ctx, [1]).serialize()])
    with pytest.raises(ProtocolError, match="ciphertext 0 from client 0 has 7 slots, expected 4096"):
        server.receive(msg)
    with pytest.raises(ProtocolError, match="client 0 sent 1 ciphertexts, expected 2"):
        server.receive(_signed_upload(parties, cfg, 0, [ts.bfv_vector(ctx, [1] * 4096).serialize()]))
    vectors = [np.random.default_rng(i).integers(0, 2, cfg.length).astype(np.uint8) for i in range(parties.n)]
    for c in parties.clients:
        parties.holder.receive_upload(cfg, server.receive(c.encrypt(cfg, vectors[c.id])))
    result = parties.holder.decrypt(cfg, server.decrypt_request())
    np.testing.assert_array_equal(server.result(result), np.sum(vectors, axis=0))


def test_malformed_ciphertext_is_named(parties):
    cfg, server = parties.round(30)
    ct_part = bytearray(_ciphertext_part(parties.clients[2].encrypt(cfg, np.ones(30, np.uint8))))
    start = 32 + 17 + 4 + 4
    ct_part[start:start + 16] = b"\xff" * 16
    msg = _signed_upload(parties, cfg, 2, [], ct_part=bytes(ct_part))
    with pytest.raises(ProtocolError, match="ciphertext 0 from client 2 is not a valid BFV ciphertext"):
        server.receive(msg)


def test_clients_range_check_and_refuse_a_substituted_context(parties):
    cfg, _ = parties.round(10)
    with pytest.raises(ValueError, match=r"client 0: .*entries must lie in \[0, 1\]"):
        parties.clients[0].encrypt(cfg, np.full(10, 2, np.uint8))
    with pytest.raises(ValueError, match="client 0: .*expected a flat vector of 10"):
        parties.clients[0].encrypt(cfg, np.ones(11, np.uint8))
    import tenseal as ts

    rogue = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=parties.holder.plain_modulus)
    data = rogue.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                           save_relin_keys=False)
    fake = encode(MsgType.HE_CONTEXT, round_id=0, sender=SERVER, receiver=0,
                  payload=data + IdentityKey.generate().sign(b"x"))
    with pytest.raises(ProtocolError, match="client 0: the HE context is not signed by the pinned key holder"):
        HEClient(0, fake, identity=parties.ids[0], directory=parties.directory)


def test_out_of_range_sum_is_refused_by_the_server():
    """A malicious client encrypts slot values above B^P: the unmasked sum is out of range and refused."""
    p = Parties(3)
    cfg, server = p.round(12)
    real = p.clients[0].encrypt

    import secprune.secagg.he as he

    original = he.encode_slots
    he.encode_slots = lambda v, base, per_slot: original(v, base=base, per_slot=per_slot) + base ** per_slot
    try:
        evil = real(cfg, np.ones(12, np.uint8))
    finally:
        he.encode_slots = original
    p.holder.receive_upload(cfg, server.receive(evil))
    for c in p.clients[1:]:
        p.holder.receive_upload(cfg, server.receive(c.encrypt(cfg, np.ones(12, np.uint8))))
    with pytest.raises(ProtocolError, match=r"outside \[0, 3\].*result refused"):
        server.result(p.holder.decrypt(cfg, server.decrypt_request()))


def test_late_upload_is_rejected_and_dropouts_and_bad_options(parties):
    cfg, server = parties.round(10, round_id=32)
    uploads = [c.encrypt(cfg, np.ones(10, np.uint8)) for c in parties.clients]
    for u in uploads[:3]:
        parties.holder.receive_upload(cfg, server.receive(u))
    with pytest.raises(ProtocolError, match="replayed"):
        server.receive(uploads[0])
    request = server.decrypt_request()
    with pytest.raises(ProtocolError, match="after the upload closed"):
        server.receive(uploads[3])
    np.testing.assert_array_equal(server.result(parties.holder.decrypt(cfg, request)), np.full(10, 3))

    summer = make_summer("he", n_clients=4, colluders=0, dropouts={"upload": [2]})
    np.testing.assert_array_equal(summer.sum("a", [np.ones(10, np.uint8)] * 4), np.full(10, 3))
    assert summer.last_survivors == [0, 1, 3]
    with pytest.raises(SecAggAbortError, match="fewer than t=3"):
        make_summer("he", n_clients=4, colluders=0, dropouts={"upload": [1, 2]}).sum("a", [np.ones(10, np.uint8)] * 4)
    with pytest.raises(ValueError, match="poly_modulus_degree"):
        make_summer("he", n_clients=4, poly_modulus_degree=1000)
    with pytest.raises(ValueError, match="plain_modulus_bits"):
        make_summer("he", n_clients=4, plain_modulus_bits=70)
    with pytest.raises(ValueError, match="dropouts"):
        make_summer("he", n_clients=4, dropouts={"unmask": [1]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_summer("he", n_clients=4).sum("a", [np.full(10, 2, np.uint8)] * 4)
