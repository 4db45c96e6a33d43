"""Checked inputs (he backend): the field and transform against the definitions, the fully linear proof's
completeness, soundness and zero knowledge, and every shifting attack of a malicious client refused, naming it,
while the others' sum completes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from secprune.secagg import flp, make_summer
from secprune.secagg import he as he_mod
from secprune.secagg.field import Field
from secprune.secagg.he_packing import batching_prime
from secprune.secagg.he_validation import Rule

pytest.importorskip("tenseal")

P = batching_prime(bits=40, poly_modulus_degree=4096)
F = Field(P)


def _rand(n: int) -> np.ndarray:
    return F.uniform(np.frombuffer(os.urandom(8 * (n + 64)), np.uint64))[:n]


def test_field_and_transform_against_the_definitions():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, P, 1000, dtype=np.int64).astype(np.uint64) for _ in range(2))
    want = np.array([int(x) * int(y) % P for x, y in zip(a, b, strict=True)], np.uint64)
    np.testing.assert_array_equal(F.mul(a, b), want)
    assert int(F.sum(a)) == sum(int(x) for x in a) % P
    n = 16
    coeffs = _rand(n)
    w = F.root(n)
    naive = [sum(int(c) * pow(w, i * k, P) for i, c in enumerate(coeffs)) % P for k in range(n)]
    np.testing.assert_array_equal(F.ntt(coeffs), np.array(naive, np.uint64))
    np.testing.assert_array_equal(F.intt(F.ntt(coeffs)), coeffs)
    assert pow(w, n, P) == 1 and pow(w, n // 2, P) != 1


def _shares(x, proof):
    xa, pa = _rand(x.size), _rand(proof.size)
    return (F.sub(F.asfield(x), xa), F.sub(proof, pa)), (xa, pa)


def _verify(x, proof, rho, shape, points=None):
    points = points or [int(r) for r in _rand(flp.POINTS)]
    (xs, ps), (xk, pk) = _shares(x, proof)
    total = F.add(flp.query(F, xs, ps, rho, shape, points, leader=True),
                  flp.query(F, xk, pk, rho, shape, points, leader=False))
    return flp.decide(F, total, shape), total


@pytest.mark.parametrize("length", [1, 5, 1000, 40_001])
def test_flp_accepts_a_0_1_vector_and_rejects_any_other(length):
    rng = np.random.default_rng(length)
    shape = flp.shape_for(length)
    rho = flp.joint_rho(F, context=b"t", parts=(b"a", b"b"), length=length)
    x = rng.integers(0, 2, length)
    seeds = _rand(2 * shape.chunk * flp.POINTS).reshape(2 * shape.chunk, flp.POINTS)
    assert _verify(x, flp.prove(F, x, rho, shape, seeds), rho, shape)[0]
    for bad in (2, P - 1, 7):  # one entry off {0, 1}: an honest proof of it fails the output
        y = x.copy()
        y[length // 2] = bad
        assert not _verify(y, flp.prove(F, y, rho, shape, seeds), rho, shape)[0]


def test_flp_catches_a_proof_forged_to_zero_the_output():
    """A cheating prover adjusts P so the output reads 0 for an invalid x: the random points catch P."""
    length = 3000
    shape = flp.shape_for(length)
    rho = flp.joint_rho(F, context=b"t", parts=(b"a", b"b"), length=length)
    x = np.random.default_rng(1).integers(0, 2, length)
    x[10] = 2
    seeds = _rand(2 * shape.chunk * flp.POINTS).reshape(2 * shape.chunk, flp.POINTS)
    proof = flp.prove(F, x, rho, shape, seeds).copy()
    _, total = _verify(x, proof, rho, shape)
    output = int(total[-1])
    assert output != 0
    # the output is n (c_0 + c_n) - P(w^0) - P(w^(M+1)); raising c_1 by e lowers it by e (1 + w^(M+1))
    base = 2 * shape.chunk * flp.POINTS
    w = F.root(shape.domain)
    e = output * F.inv(1 + pow(w, shape.calls + 1, P)) % P
    proof[base + 1] = (int(proof[base + 1]) + e) % P
    ok, total = _verify(x, proof, rho, shape)
    assert int(total[-1]) == 0 and not ok  # the output is forged to zero, the polynomial check fails


def test_flp_queries_reveal_nothing_of_the_input():
    """The revealed wire values at the two points are uniform whatever x is: an all-zero and an all-one input
    give indistinguishable distributions (chi-square on the top bits of the first wire's values)."""
    from scipy.stats import chisquare

    length = 64
    shape = flp.shape_for(length)
    rho = flp.joint_rho(F, context=b"t", parts=(b"a", b"b"), length=length)
    points = [int(r) for r in _rand(flp.POINTS)]
    for x in (np.zeros(length, int), np.ones(length, int)):
        firsts = []
        for _ in range(800):
            seeds = _rand(2 * shape.chunk * flp.POINTS).reshape(2 * shape.chunk, flp.POINTS)
            _, total = _verify(x, flp.prove(F, x, rho, shape, seeds), rho, shape, points)
            firsts.append(int(total[0]) * 8 // P)
        assert chisquare(np.bincount(firsts, minlength=8)).pvalue > 1e-4


def _summer(n=4, **kw):
    return make_summer("he", n_clients=n, colluders=0, **kw)


def _malicious(monkeypatch, who: int, what: str) -> None:
    """Make client ``who`` cheat while encrypting: an entry of 2 (with an honest proof of it), or a shifted slot or
    a carry into the next digit (its proof covers the true vector).  No client checks its own range here (the
    honest ones' vectors are 0/1 anyway)."""
    real_encode = he_mod.encode_slots
    state = {"client": None}

    def encode(vector, *, base, per_slot):
        out = real_encode(vector, base=base, per_slot=per_slot)
        if state["client"] == who:
            out[0] += 1 if what == "slot" else base if what == "carry" else 0
        return out

    def check(vector, *, length, max_value, who):
        return np.asarray(vector)  # a malicious client skips its own range check

    monkeypatch.setattr(he_mod, "encode_slots", encode)
    monkeypatch.setattr(he_mod, "check_vector", check)
    real_encrypt = he_mod.HEClient.encrypt

    def encrypt(self, cfg, vector, *, name="vector"):
        state["client"] = self.id
        if self.id == who and what == "two":
            vector = np.asarray(vector).copy()
            vector[3] = 2
        try:
            return real_encrypt(self, cfg, vector, name=name)
        finally:
            state["client"] = None

    monkeypatch.setattr(he_mod.HEClient, "encrypt", encrypt)


@pytest.mark.parametrize("what, why", [
    ("two", "its input is not a 0/1 vector"),
    ("slot", "its ciphertexts do not encrypt the input it proved"),
    ("carry", "its ciphertexts do not encrypt the input it proved"),
])
def test_a_shifting_client_is_refused_named_and_left_out(monkeypatch, what, why):
    """The issue's attacks on he: +-1 in a packed slot, +B carried into the next entry, an entry of 2.  Each is
    caught by the client's proof or the binding test, the client is named, and the others' sum is exact."""
    rng = np.random.default_rng(3)
    vectors = [(rng.random(700) < 0.5).astype(np.uint8) for _ in range(4)]
    _malicious(monkeypatch, who=2, what=what)
    summer = _summer()
    out = summer.sum("layers.0.q", vectors)
    assert set(summer.rejected) == {2} and why in summer.rejected[2]
    assert summer.last_survivors == [0, 1, 3]
    np.testing.assert_array_equal(out, np.sum([vectors[i] for i in (0, 1, 3)], axis=0))


def test_a_forged_proof_is_refused(monkeypatch):
    rng = np.random.default_rng(4)
    vectors = [(rng.random(500) < 0.5).astype(np.uint8) for _ in range(4)]
    _malicious(monkeypatch, who=1, what="two")
    real = flp.prove

    def forged(field, x, rho, shape, seeds):
        proof = real(field, x, rho, shape, seeds).copy()
        # zero the output as in test_flp_catches_a_proof_forged_to_zero_the_output
        c = shape.chunk * flp.POINTS * 2
        n = shape.domain
        w = field.root(n)
        coeffs = proof[c:]
        at = sum(int(field.dot(coeffs, field.powers(pow(w, q, field.p), coeffs.size))) for q in shape.seed_positions)
        output = (n * (int(coeffs[0]) + int(coeffs[n])) - at) % field.p
        proof[c + 1] = (int(proof[c + 1]) + output * field.inv(1 + pow(w, shape.calls + 1, field.p))) % field.p
        return proof

    monkeypatch.setattr(flp, "prove", forged)
    summer = _summer()
    out = summer.sum("layers.0.q", vectors)
    assert set(summer.rejected) == {1} and "not a 0/1 vector" in summer.rejected[1]
    np.testing.assert_array_equal(out, np.sum([vectors[i] for i in (0, 2, 3)], axis=0))


def test_a_mask_with_the_wrong_count_in_a_row_is_refused():
    """Valid bits, but one row of client 0's mask prunes k + 1 entries: the group-total test names it."""
    rng = np.random.default_rng(5)
    rows, cols, k = 20, 30, 15

    def mask(extra=False):
        m = np.zeros((rows, cols), np.uint8)
        for r in range(rows):
            m[r, rng.choice(cols, k + (extra and r == 7), replace=False)] = 1
        return m.reshape(-1)

    vectors = [mask(extra=i == 0) for i in range(4)]
    summer = _summer()
    session = summer.open_session("s", [("e", {"layers.0.q": rows * cols})],
                                  rules={"layers.0.q": Rule("row", (rows, cols), k)})
    out = session.sum_epoch(0, lambda i, name: vectors[i])["layers.0.q"]
    assert set(summer.rejected) == {0} and "required number of ones in every group" in summer.rejected[0]
    np.testing.assert_array_equal(out, np.sum(vectors[1:], axis=0))


def test_the_key_holder_never_sees_the_servers_share_and_refuses_bad_points(monkeypatch):
    """The forward to the key holder carries only the hash of the server's part (the key holder with both shares
    would have the input); a key holder drawing a query point inside the interpolation subgroup is refused."""
    from secprune.secagg import he_validation as hv

    summer = _summer()
    vectors = [np.ones(100, np.uint8)] * 4
    sent = []
    real_send = summer._send

    def spy(sender, receiver, message):
        sent.append((sender, receiver, message))
        return real_send(sender, receiver, message)

    summer._send = spy
    summer.sum("a", vectors)
    from secprune.secagg.messages import HEADER, KEY_HOLDER

    to_kh = [m for _, r, m in sent if r == KEY_HOLDER]
    client_uploads = [m for s, _, m in sent if s < 4]
    assert len(client_uploads) == 4
    for upload in client_uploads:  # the server's share c of the input never reaches the key holder
        parts, _ = he_mod._split_upload(upload[HEADER.size:-64], "test", 0)
        needle = parts[2][32:32 + 40]
        assert len(needle) == 40 and all(needle not in m for m in to_kh)
    monkeypatch.setattr(hv, "draw_randomness", lambda **kw: hv.Randomness((1, 1), bytes(32), bytes(32)))
    with pytest.raises(Exception, match="query point inside the interpolation subgroup"):
        _summer().sum("b", [np.ones(100, np.uint8) for _ in range(4)])


def test_two_rounds_side_by_side_survive_a_key_holder_restart_and_a_withdrawn_upload():
    """The Flower key holder checks a step's matrices in one message and decides in the next (its state saved
    and reloaded between): two rounds stay apart, a restored pending upload is added as received, and a client
    the server withdraws after its checks passed is left out of the decrypted sum (a subset of the accepted)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from secprune.secagg.crypto import public_bytes
    from secprune.secagg.he import HEConfig, HEServer, KeyHolder
    from secprune.secagg.messages import KEY_HOLDER

    rng = np.random.default_rng(6)
    summer = _summer()
    summer._setup()
    holder = summer.key_holder
    rounds = {}
    for rid, length in ((101, 300), (202, 450)):
        sk = X25519PrivateKey.generate()
        cfg = HEConfig(round_id=rid, n_clients=4, length=length, max_value=1, plain_modulus=holder.plain_modulus,
                       poly_modulus_degree=holder.poly_modulus_degree, server_key=public_bytes(sk), validate=True)
        server = HEServer(cfg, summer._context, directory=summer.directory, server_key=sk, min_contributors=3)
        vectors = [(rng.random(length) < 0.5).astype(np.uint8) for _ in range(4)]
        checks = [holder.receive_upload(cfg, server.receive(summer._clients[i].encrypt(cfg, vectors[i],
                                                                                        name=f"m{rid}")))
                  for i in range(4)]
        rounds[rid] = (cfg, server, vectors, checks)
    holder = KeyHolder.import_state(holder.export_state(), identity=summer._identities[KEY_HOLDER],
                                    directory=summer.directory)
    for cfg, server, _vectors, checks in rounds.values():
        for check in checks:
            assert holder.receive_decision(cfg, server.verify(check)) is None
    cfg, server, vectors, _ = rounds[101]
    server.withdraw(3)  # e.g. its upload of another matrix was refused
    out = server.result(holder.decrypt(cfg, server.decrypt_request()))
    np.testing.assert_array_equal(out, np.sum(vectors[:3], axis=0))
    cfg, server, vectors, _ = rounds[202]
    out = server.result(holder.decrypt(cfg, server.decrypt_request()))
    np.testing.assert_array_equal(out, np.sum(vectors, axis=0))
